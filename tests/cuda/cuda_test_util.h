// SPDX-License-Identifier: MIT
// Helpers of the device tests: one CPU and one CUDA backend per process, tensors that exist on both
// (the CPU copy F32, the device copy BF16 or F32, both holding the same bf16-representable values),
// random data, and a comparator that checks NaN/inf position parity, then |got - ref| <= atol +
// rtol |ref| element-wise and the normalised mean squared error, printing the first failures.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/dtype.h"
#include "common/kv_format.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "kernels/cuda/device.h"

namespace v4rt::kernels::cuda_test {

inline bool gpu_present() { return cuda::device_count() > 0; }

#define V4RT_REQUIRE_GPU() \
  if (!::v4rt::kernels::cuda_test::gpu_present()) GTEST_SKIP() << "no CUDA device on this machine"

Backend& cpu_backend();
Backend& gpu_backend();

inline TensorView make_view(void* p, DType dt, const std::vector<int64_t>& dims, Device dev) {
  TensorView v;
  v.data = p;
  v.dtype = dt;
  v.device = dev;
  v.ndim = int(dims.size());
  int64_t s = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[size_t(d)] = dims[size_t(d)];
    v.stride[size_t(d)] = s;
    s *= dims[size_t(d)];
  }
  return v;
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  float normal(float sd = 1.f) { return std::normal_distribution<float>(0.f, sd)(gen); }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
  int64_t integer(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); }
  std::vector<float> normals(int64_t n, float sd = 1.f, bool bf16 = true) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = bf16 ? round_bf16(normal(sd)) : normal(sd);
    return v;
  }
};

// A tensor on both backends. The CPU side is always F32; the GPU side `gpu_dtype` (BF16/F32/I32).
struct Dual {
  std::vector<int64_t> dims;
  DType gpu_dtype = DType::kBF16;
  Buffer cpu_buf, gpu_buf;
  TensorView cpu, gpu;
  int64_t numel() const;
  std::vector<float> cpu_values() const;  // CPU side as floats
  std::vector<float> gpu_values() const;  // GPU side downloaded, as floats
};
// Values are used as given on the CPU side and converted (bf16: RNE) on the GPU side; pass
// bf16-representable values for identical inputs.
Dual make_dual(const std::vector<int64_t>& dims, const std::vector<float>& values, DType gpu_dtype = DType::kBF16);
Dual make_dual_i32(const std::vector<int64_t>& dims, const std::vector<int32_t>& values);
std::vector<int32_t> gpu_i32(const Dual& d);
std::vector<int32_t> cpu_i32(const Dual& d);

// Uploads the same weight source to both backends.
struct DualWeight {
  WeightView cpu, gpu;
};
DualWeight upload_both(const WeightSource& s);
DualWeight upload_f32(const std::vector<float>& v, int64_t rows, int64_t cols, DType as = DType::kF32,
                      std::vector<uint16_t>* keep_bf16 = nullptr);

// Rows of a compact KV layout on both backends: official values (rounded by the CPU backend so the
// format holds them exactly), packed; the CPU side reads the host bytes, the GPU side a copy.
struct DualRows {
  std::vector<uint8_t> bytes;
  Buffer gpu_buf;
  TensorView cpu, gpu;
};
DualRows dual_compact_rows(const KvRowLayout& l, int64_t rows, Rng& rng);

// Packed KV rows (`rows` of `row_bytes`) held the way a paged pool holds them, scrambled: block b
// of 2^shift rows in 256-byte-aligned slot nb - 1 - b of a device pool filled with 0xA5 bytes, and
// the device block table that finds them. `view` names the rows for the ops (its data: block 0).
struct PagedRows {
  Buffer pool, table;
  KvBlocks blocks;
  TensorView view;
};
PagedRows page_rows_reversed(const std::vector<uint8_t>& bytes, int64_t rows, int64_t row_bytes, int shift = 4);

struct Tolerance {
  double rtol = 1e-2;
  double atol_rms = 1e-2;  // atol = atol_rms * rms(ref)
  double max_nmse = 1e-4;
};
// Decode sparse attention split over the candidates against the CPU's one pass: each split rounds
// its P to bf16 against its own running max, so a single output can move by a few bf16 ulps of the
// small values (on an H100, 2026-12-06: one of 32,768 outputs 6.7e-4 off at rms 4.1e-2, nmse
// 5.5e-6); the nmse bound is that of one bf16 rounding.
inline constexpr Tolerance kSplitTol{1e-2, 2e-2, 1e-4};
// Returns true when every element passes; prints a summary line and the first failures.
::testing::AssertionResult compare(const std::string& what, const std::vector<float>& got,
                                   const std::vector<float>& ref, const Tolerance& tol);

}  // namespace v4rt::kernels::cuda_test
