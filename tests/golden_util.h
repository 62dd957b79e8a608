// SPDX-License-Identifier: MIT
// Helpers shared by the tests that compare against golden data (tests/data/golden/<case>/): the
// golden folder (V4RT_GOLDEN_DIR, overridable at run time by the environment variable of that
// name), the reference tensors of a case's reference.safetensors, and the relative Frobenius
// error every golden tolerance is stated in (golden/README.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/dtype.h"
#include "model/safetensors.h"

namespace v4rt::testing {

// tests/data/golden/<name>: $V4RT_GOLDEN_DIR when set and not empty, else the build's V4RT_GOLDEN_DIR.
inline std::string golden_case_dir(const std::string& name) {
  const char* env = std::getenv("V4RT_GOLDEN_DIR");
#ifdef V4RT_GOLDEN_DIR
  const std::string root = env && *env ? env : V4RT_GOLDEN_DIR;
#else
  const std::string root = env && *env ? env : "";
#endif
  return root + "/" + name;
}

// The tensors of a golden reference.safetensors: the token ids (the I64 tensor `input_ids`) and
// every F32 tensor by name (prefill_logits [T, vocab], decode_logits, prefill_hidden_after_layer_<l>).
struct GoldenReference {
  std::string path;  // the file, named in errors
  std::vector<int32_t> ids;
  std::map<std::string, std::vector<float>> f32;

  // The F32 tensor `name`; a v4rt::Error naming the file and tensor when it is absent.
  const std::vector<float>& at(const std::string& name) const {
    const auto it = f32.find(name);
    V4RT_REQUIRE(it != f32.end(), path << ": no F32 tensor '" << name << "'");
    return it->second;
  }
};

// Reads `path` (a reference.safetensors) through the runtime's own header parser, which validates
// every range. Tensors of other dtypes are an error: a golden file holds only these two.
inline GoldenReference load_golden_reference(const std::string& path) {
  GoldenReference out;
  out.path = path;
  model::safetensors::MappedFile file(path);
  const model::safetensors::Header h =
      model::safetensors::parse_header(file.data(), file.size(), file.size(), path);
  for (const model::safetensors::Entry& e : h.entries) {
    const uint8_t* p = file.data() + h.data_offset + e.begin;  // [numel] of the entry's dtype
    const uint64_t n = model::safetensors::shape_numel(e.shape);
    if (e.dtype == DType::kI64) {
      V4RT_REQUIRE(e.name == "input_ids", path << ": unexpected I64 tensor '" << e.name << "'");
      out.ids.resize(n);
      for (uint64_t i = 0; i < n; ++i) {
        int64_t v;
        std::memcpy(&v, p + 8 * i, 8);
        out.ids[i] = int32_t(v);
      }
    } else {
      V4RT_REQUIRE(e.dtype == DType::kF32, path << ": tensor '" << e.name << "' is neither I64 nor F32");
      std::vector<float> v(n);
      std::memcpy(v.data(), p, n * 4);
      out.f32[e.name] = std::move(v);
    }
  }
  return out;
}

// golden/<name>/reference.safetensors, read once per process.
inline const GoldenReference& golden_reference(const std::string& name = "tiny-a") {
  static std::map<std::string, GoldenReference> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    it = cache.emplace(name, load_golden_reference(golden_case_dir(name) + "/reference.safetensors")).first;
  }
  return it->second;
}

// Relative Frobenius error ||a - b|| / ||b|| over n values, in double; b is the reference.
inline double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / den);
}

}  // namespace v4rt::testing
