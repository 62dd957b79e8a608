// SPDX-License-Identifier: MIT
// A nesting-depth guard for JSON text, run before parsing. nlohmann's parser is iterative, but
// copying, dumping and destroying a value recurse once per level, so a few MB of "[[[[..." (a
// corrupt shard header, a hostile request body) would overflow the stack. Python's json module
// stops near 1000 levels for the same reason; v4rt refuses anything deeper than kMaxJsonDepth.
#pragma once

#include <string_view>

namespace v4rt {

inline constexpr int kMaxJsonDepth = 512;

// True when no array/object in `text` nests deeper than `max_depth` (brackets inside strings are
// ignored). Does not validate the JSON otherwise.
inline bool json_depth_ok(std::string_view text, int max_depth = kMaxJsonDepth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // skip the escaped character
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

}  // namespace v4rt
