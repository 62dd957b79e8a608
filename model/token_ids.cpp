// SPDX-License-Identifier: MIT
// read_token_ids: safetensors `input_ids` or a text list of integers.
#include "model/token_ids.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/check.h"
#include "model/safetensors.h"

namespace v4rt::model {

std::vector<int32_t> read_token_ids(const std::string& path) {
  std::vector<int32_t> ids;
  if (path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0) {
    safetensors::MappedFile file(path);
    const safetensors::Header h = safetensors::parse_header(file.data(), file.size(), file.size(), path);
    for (const safetensors::Entry& e : h.entries) {
      if (e.name != "input_ids") continue;
      const uint8_t* p = file.data() + h.data_offset + e.begin;
      const uint64_t n = safetensors::shape_numel(e.shape);
      for (uint64_t i = 0; i < n; ++i) {
        if (e.dtype == DType::kI64) {
          int64_t v;
          std::memcpy(&v, p + 8 * i, 8);
          V4RT_REQUIRE(v >= INT32_MIN && v <= INT32_MAX, path << ": input_ids[" << i << "] = " << v << " is out of range");
          ids.push_back(int32_t(v));
        } else if (e.dtype == DType::kI32) {
          int32_t v;
          std::memcpy(&v, p + 4 * i, 4);
          ids.push_back(v);
        } else {
          V4RT_FAIL(path << ": input_ids has dtype " << dtype_name(e.dtype) << ", expected I64 or I32");
        }
      }
      return ids;
    }
    V4RT_FAIL(path << ": no tensor named input_ids");
  }
  std::ifstream in(path);
  V4RT_REQUIRE(in.good(), "cannot open token id file " << path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (std::isspace(static_cast<unsigned char>(c)) || c == ',' || c == '[' || c == ']') {
      ++i;
      continue;
    }
    size_t end = i;
    if (text[end] == '-') ++end;
    while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
    V4RT_REQUIRE(end > i && (end > i + 1 || text[i] != '-'),
                 path << ": unexpected text '" << text.substr(i, 16) << "' (expected integers)");
    // At most 10 digits: anything longer cannot be a token id (and would overflow stoll).
    const size_t digits = end - i - (text[i] == '-' ? 1 : 0);
    const int64_t v = digits <= 10 ? std::stoll(text.substr(i, end - i)) : INT64_MAX;
    V4RT_REQUIRE(v >= INT32_MIN && v <= INT32_MAX,
                 path << ": token id '" << text.substr(i, std::min<size_t>(end - i, 24)) << "' is out of range");
    ids.push_back(int32_t(v));
    i = end;
  }
  return ids;
}

}  // namespace v4rt::model
