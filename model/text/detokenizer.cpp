// SPDX-License-Identifier: MIT
// Streaming detokenizer (see detokenizer.h).
#include "model/text/detokenizer.h"

#include "model/text/utf8.h"

namespace v4rt::model::text {

std::string utf8_sanitize(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    uint32_t cp;
    const size_t n = utf8_decode(bytes, i, &cp);
    if (n == 0) {
      out.append("\xEF\xBF\xBD");
      ++i;
    } else {
      out.append(bytes.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string Detokenizer::push(int32_t id) { return push_bytes(tokenizer_->token_bytes(id)); }

std::string Detokenizer::push_bytes(std::string_view bytes) {
  pending_.append(bytes);
  const size_t hold = utf8_incomplete_tail(pending_);
  std::string out = utf8_sanitize(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string Detokenizer::flush() {
  std::string out = utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace v4rt::model::text
