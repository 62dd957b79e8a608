// SPDX-License-Identifier: MIT
// Helpers for the CPU op tests: host tensors as std::vector<float>, F32 weight upload, views.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

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

}  // namespace v4rt::kernels
