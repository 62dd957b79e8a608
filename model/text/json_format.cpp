// SPDX-License-Identifier: MIT
// Python-compatible JSON parsing and formatting (see json_format.h). The parser is nlohmann's DOM
// builder with one change: a number that overflows 64-bit integers keeps its digits (Python ints
// have no size limit) instead of degrading to a double.
#include "model/text/json_format.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/check.h"
#include "common/json_depth.h"

namespace v4rt::model::text {
namespace {

using DomParser = nlohmann::detail::json_sax_dom_parser<Json>;

// DOM builder that routes integer-looking "floats" (overflowed integers) to a big-int value.
class ExactSax : public DomParser {
 public:
  ExactSax(Json& root, bool allow_exceptions) : DomParser(root, allow_exceptions) {}

  bool number_float(double val, const std::string& s) {
    const bool integral = s.find_first_of(".eE") == std::string::npos;
    if (!integral) return DomParser::number_float(val, s);
    Json::binary_t digits(std::vector<uint8_t>(s.begin(), s.end()), kBigIntSubtype);
    return DomParser::binary(digits);
  }
};

bool parse_impl(std::string_view text, Json* out, bool allow_exceptions) {
  // nlohmann's lexer takes a NUL byte for the end of input, so "{}\0junk" would parse. JSON has no
  // raw NUL anywhere (inside strings it must be escaped), so such text is invalid as a whole.
  if (text.find('\0') != std::string_view::npos) return false;
  Json result;
  ExactSax sax(result, allow_exceptions);
  const bool ok = Json::sax_parse(text.begin(), text.end(), &sax);
  if (!ok || sax.is_errored()) return false;
  *out = std::move(result);
  return true;
}

}  // namespace

Json json_parse(std::string_view text, std::string_view what) {
  V4RT_REQUIRE(json_depth_ok(text), what << ": invalid JSON: nests deeper than " << kMaxJsonDepth << " levels");
  const size_t nul = text.find('\0');
  V4RT_REQUIRE(nul == std::string_view::npos, what << ": invalid JSON: a NUL byte at offset " << nul);
  Json out;
  try {
    if (parse_impl(text, &out, true)) return out;
  } catch (const nlohmann::json::exception& e) {
    V4RT_FAIL(what << ": invalid JSON: " << e.what());
  }
  V4RT_FAIL(what << ": invalid JSON");
}

bool json_try_parse(std::string_view text, Json* out) {
  if (!json_depth_ok(text)) return false;
  try {
    return parse_impl(text, out, false);
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

void json_escape_to(std::string_view s, std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  size_t run = 0;  // start of the pending run of bytes that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
        out->append(esc, 6);
      }
    }
  }
  out->append(s.data() + run, s.size() - run);
}

void json_quote_to(std::string_view s, std::string* out) {
  out->push_back('"');
  json_escape_to(s, out);
  out->push_back('"');
}

std::string json_quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  json_quote_to(s, &out);
  return out;
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // e.g. "-1.2345e+02"
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t epos = sci.find('e');
  const int exp10 = std::atoi(sci.c_str() + epos + 1);
  std::string digits;
  for (size_t i = 0; i < epos; ++i)
    if (sci[i] != '.') digits.push_back(sci[i]);
  const int ndig = static_cast<int>(digits.size());
  std::string out = sign;
  if (exp10 < -4 || exp10 >= 16) {
    out += digits[0];
    if (ndig > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += e;
  } else if (exp10 >= 0) {
    const int int_digits = exp10 + 1;
    if (ndig <= int_digits) {
      out += digits + std::string(int_digits - ndig, '0') + ".0";
    } else {
      out += digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    }
  } else {
    out += "0." + std::string(-exp10 - 1, '0') + digits;
  }
  return out;
}

void json_dumps_to(const Json& v, std::string* out) {
  switch (v.type()) {
    case Json::value_t::null: out->append("null"); break;
    case Json::value_t::boolean: out->append(v.get<bool>() ? "true" : "false"); break;
    case Json::value_t::number_integer: out->append(std::to_string(v.get<int64_t>())); break;
    case Json::value_t::number_unsigned: out->append(std::to_string(v.get<uint64_t>())); break;
    case Json::value_t::number_float: out->append(python_float_repr(v.get<double>())); break;
    case Json::value_t::string: json_quote_to(v.get_ref<const std::string&>(), out); break;
    case Json::value_t::binary: {
      const auto& bin = v.get_binary();
      if (bin.has_subtype() && bin.subtype() == kBigIntSubtype) {
        out->append(bin.begin(), bin.end());
      } else {
        V4RT_FAIL("json_dumps: binary values have no JSON text form");
      }
      break;
    }
    case Json::value_t::array: {
      out->push_back('[');
      bool first = true;
      for (const auto& e : v) {
        if (!first) out->append(", ");
        first = false;
        json_dumps_to(e, out);
      }
      out->push_back(']');
      break;
    }
    case Json::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, val] : v.items()) {
        if (!first) out->append(", ");
        first = false;
        json_quote_to(key, out);
        out->append(": ");
        json_dumps_to(val, out);
      }
      out->push_back('}');
      break;
    }
    case Json::value_t::discarded: out->append("null"); break;
  }
}

std::string json_dumps(const Json& v) {
  std::string out;
  json_dumps_to(v, &out);
  return out;
}

}  // namespace v4rt::model::text
