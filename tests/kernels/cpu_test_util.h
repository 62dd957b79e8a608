// SPDX-License-Identifier: MIT
// Helpers for the CPU op tests: host tensors as std::vector<float>, F32 weight upload, views, and
// compact KV rows as the official numerics produce them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/kv_format.h"
#include "kernels/backend.h"

namespace v4rt::kernels {

inline TensorView tv(std::vector<float>& v, std::initializer_list<int64_t> dims) {
  return TensorView(v.data(), DType::kF32, dims);
}
inline TensorView tvi(std::vector<int32_t>& v, std::initializer_list<int64_t> dims) {
  return TensorView(v.data(), DType::kI32, dims);
}
inline WeightView upload_f32(Backend& be, const std::vector<float>& v, int64_t rows, int64_t cols) {
  WeightSource s;
  s.name = "test";
  s.dtype = DType::kF32;
  s.rows = rows;
  s.cols = cols;
  s.data = v.data();
  return be.upload_weight(s);
}
inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}
inline double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

inline bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Rows of `dim` values at assorted magnitudes (whole blocks of zeros, signed zeros, values far
// below and above 1), rounded as the official numerics round main entries (FP8 block 64 on the
// first dim - rope dims, bf16 on the rest) or indexer keys (FP4 block 32 on all dims).
inline std::vector<float> official_rows(Backend& be, const KvRowLayout& l, int64_t rows, uint64_t seed) {
  std::vector<float> x = randn(size_t(rows * l.dim), seed);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data() + r * l.dim;
    const float scale = std::ldexp(1.0f, int(r % 9) * 4 - 20);  // 2^-20 .. 2^12
    for (int64_t i = 0; i < l.dim; ++i) row[i] *= scale;
    if (r % 5 == 1) std::fill(row, row + std::min<int64_t>(l.dim, 32), 0.0f);
    if (r % 5 == 2) row[3] = -0.0f;
  }
  round_to_kv_layout(be, l, tv(x, {rows, l.dim}));
  return x;
}

inline std::vector<uint8_t> pack(Backend& be, const KvRowLayout& l, std::vector<float>& x) {
  const int64_t rows = int64_t(x.size()) / l.dim;
  std::vector<uint8_t> out(size_t(rows * l.row_bytes));
  KvPackParams p;
  p.x = tv(x, {rows, l.dim});
  p.out = TensorView(out.data(), DType::kU8, {rows, l.row_bytes});
  p.layout = l;
  be.kv_pack(p);
  return out;
}

}  // namespace v4rt::kernels
