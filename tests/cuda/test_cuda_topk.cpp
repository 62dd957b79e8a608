// SPDX-License-Identifier: MIT
// Top-k of many long rows on the device (prefill: the row-per-block radix select of
// kernels/cuda/topk.cu, every narrowing level and the column-order tie cut) against the CPU op,
// indices and values exactly; and of bf16 scores (the official numerics' indexer scores) on every
// path of the op against the CPU op on the same values in F32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

// Row r of a top-k case by kind r % 7: coarse values (many ties in every digit), one value
// everywhere (a tie far larger than the candidate buffer: the column-order cut), bf16 normals,
// few valid scores (every one selected), a causal -inf tail with NaN and signed zeros, fp32 values
// differing only in their low 8 bits (the third digit), and a constant run covering the k-th key.
std::vector<float> topk_rows(int rows, int cols, int64_t stride, Rng& rng) {
  std::vector<float> s(size_t(rows) * size_t(stride), 12345.f);  // padding past cols: never read
  for (int r = 0; r < rows; ++r) {
    float* row = &s[size_t(r) * size_t(stride)];
    const int kind = r % 7;
    for (int c = 0; c < cols; ++c) {
      float v = 0.f;
      switch (kind) {
        case 0: v = round_bf16(float(rng.integer(-300, 300)) / 64.f); break;
        case 1: v = 1.5f; break;
        case 2: v = round_bf16(rng.normal(3.f)); break;
        case 3: v = rng.integer(0, 499) == 0 ? round_bf16(rng.normal()) : -INFINITY; break;
        case 4: v = c < cols / 3 ? round_bf16(float(rng.integer(-20, 20)) / 8.f) : -INFINITY; break;
        case 5: v = 1.f + float(rng.integer(0, 255)) * std::ldexp(1.f, -23); break;
        default: v = rng.integer(0, 3) == 0 ? 2.f : round_bf16(rng.normal(1.f)); break;
      }
      row[c] = v;
    }
    for (int i = 0; i < cols / 20; ++i) row[rng.integer(0, cols - 1)] = -INFINITY;  // -inf runs and singles
    const int run = int(rng.integer(0, cols - 2000));
    for (int c = run; c < run + 1500; ++c) row[c] = -INFINITY;
    if (kind == 4) {
      row[0] = -0.0f;
      row[1] = 0.0f;
      row[2] = NAN;
      row[5] = INFINITY;
    }
  }
  return s;
}

struct TopkCase {
  int rows, cols;
  int64_t stride;
  int k;
  std::string name() const {
    return std::to_string(rows) + "x" + std::to_string(cols) + " stride " + std::to_string(stride) + " k=" +
           std::to_string(k);
  }
};

// The device op on `values` ([rows, stride], the first cols of each row used) held as gpu_dtype
// against the CPU op on the same values in F32: the same columns in the same order, the same values.
void expect_topk_equal(const TopkCase& c, const std::vector<float>& values, DType gpu_dtype, int64_t index_offset,
                       const char* what) {
  const std::string name = c.name();
  Dual sc = make_dual({c.rows, c.stride}, values, gpu_dtype);
  TensorView cpu_scores = sc.cpu, gpu_scores = sc.gpu;
  cpu_scores.shape[1] = gpu_scores.shape[1] = c.cols;  // rows of `stride`, `cols` used
  Dual idx = make_dual_i32({c.rows, c.k}, std::vector<int32_t>(size_t(c.rows) * c.k, 7));
  Dual val = make_dual({c.rows, c.k}, std::vector<float>(size_t(c.rows) * c.k, 0.f), DType::kF32);
  TopkParams p;
  p.k = c.k;
  p.index_offset = index_offset;
  p.scores = cpu_scores; p.out_idx = idx.cpu; p.out_values = val.cpu;
  cpu_backend().topk(p);
  p.scores = gpu_scores; p.out_idx = idx.gpu; p.out_values = val.gpu;
  gpu_backend().topk(p);
  const auto gi = gpu_i32(idx), ci = cpu_i32(idx);
  int64_t mismatches = 0, first = -1;
  for (size_t i = 0; i < gi.size(); ++i)
    if (gi[i] != ci[i]) {
      if (first < 0) first = int64_t(i);
      ++mismatches;
    }
  const std::vector<float> gv = val.gpu_values(), cv = val.cpu_values();
  int64_t differ = 0;
  for (size_t i = 0; i < gv.size(); ++i) differ += std::memcmp(&gv[i], &cv[i], 4) != 0;
  std::printf("[compare] %s %s: index mismatches=%lld, values differing=%lld\n", what, name.c_str(),
              static_cast<long long>(mismatches), static_cast<long long>(differ));
  EXPECT_EQ(mismatches, 0) << name << ": first at row " << (first < 0 ? -1 : first / c.k) << " slot "
                           << (first < 0 ? -1 : first % c.k) << " (gpu " << (first < 0 ? 0 : gi[size_t(first)])
                           << ", cpu " << (first < 0 ? 0 : ci[size_t(first)]) << ")";
  EXPECT_EQ(differ, 0) << name << ": values differ";
}

// 300 rows x 70,000 scores (and a padded stride with a scalar tail, and k = 2,048 / 1) against
// the CPU op.
TEST(CudaTopk, ManyLongRowsExact) {
  V4RT_REQUIRE_GPU();
  Rng rng(71);
  for (const TopkCase& c : {TopkCase{300, 70000, 70000, 512}, TopkCase{70, 70001, 70004, 2048},
                            TopkCase{35, 16384, 16384, 1}, TopkCase{21, 40003, 40008, 700}}) {
    SCOPED_TRACE(c.name());
    expect_topk_equal(c, topk_rows(c.rows, c.cols, c.stride, rng), DType::kF32, 5, "topk rows");
  }
}

// bf16 scores on the device against the same values as F32 on the CPU: the row-per-block kernel
// (many long rows), the narrowing path (few long rows), the single-block kernel (short rows, and
// long rows whose bf16 stride is not a multiple of 16 bytes).
TEST(CudaTopk, Bf16ScoresExact) {
  V4RT_REQUIRE_GPU();
  Rng rng(72);
  for (const TopkCase& c : {TopkCase{300, 70000, 70000, 512}, TopkCase{9, 70001, 70008, 2048},
                            TopkCase{40, 5000, 5000, 512}, TopkCase{21, 40003, 40005, 700}}) {
    SCOPED_TRACE(c.name());
    std::vector<float> v = topk_rows(c.rows, c.cols, c.stride, rng);
    for (float& x : v) x = std::isnan(x) ? x : round_bf16(x);  // the values bf16 holds
    expect_topk_equal(c, v, DType::kBF16, 0, "topk bf16");
  }
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
