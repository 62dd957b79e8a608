// SPDX-License-Identifier: MIT
// JSON exactly as DeepSeek's Python encoder sees it (chat-format §6.4): parsing that keeps key
// order, keeps the integer/float distinction and integers of any size (Python json.loads), and
// formatting that reproduces json.dumps(v, ensure_ascii=False) byte for byte: ", " and ": "
// separators, raw non-ASCII, \u00XX for other control characters, floats as Python repr.
// The prompt the model sees depends on these bytes (tool schemas, string="false" values), so every
// JSON that enters the chat encoder must come through json_parse, never through a plain parse.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace v4rt::model::text {

// Insertion-ordered JSON. Integers wider than 64 bits are held as a binary value whose subtype is
// kBigIntSubtype and whose bytes are the decimal digits (with a leading '-' if negative).
using Json = nlohmann::ordered_json;
inline constexpr uint64_t kBigIntSubtype = 0x4249;  // "BI"

// Parses JSON text; throws v4rt::Error naming `what` (a file or field) on malformed input.
// Duplicate keys: the last value wins at the position of the first occurrence (as Python dict).
Json json_parse(std::string_view text, std::string_view what);
// Same, returning false instead of throwing.
bool json_try_parse(std::string_view text, Json* out);

// json.dumps(v, ensure_ascii=False).
std::string json_dumps(const Json& v);
void json_dumps_to(const Json& v, std::string* out);

// json.dumps(s, ensure_ascii=False) for one string: quotes plus escapes.
std::string json_quote(std::string_view s);
void json_quote_to(std::string_view s, std::string* out);
// The escaped body only (no surrounding quotes); safe to apply to any split of `s` that does not
// cut a UTF-8 character, since escapes only touch ASCII bytes.
void json_escape_to(std::string_view s, std::string* out);

// Python repr(float): shortest round-trip digits, scientific when the exponent is < -4 or >= 16,
// ".0" kept on integral values; NaN / Infinity / -Infinity as json.dumps writes them.
std::string python_float_repr(double v);

}  // namespace v4rt::model::text
