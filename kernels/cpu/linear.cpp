// SPDX-License-Identifier: MIT
// Dense projections: y = x w^T with optional FP8 activation quantization (spec §2.2; the dequantized
// weight times the quantize-dequantized activation equals the blockwise-scaled FP8 GEMM up to fp32
// summation order) and the block-diagonal grouped output projection (spec §5.7).
#include <cstring>

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

void CpuBackend::linear(const LinearParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t in = p.w.cols;
  const int64_t out = p.w.rows;
  check_f32(p.x, n, in, "linear x");
  check_f32(p.y, n, out, "linear y");
  const float* w = weight_f32(p.w);
  std::vector<float> xq(p.act_quant_fp8 ? size_t(in) : 0);
  for (int64_t t = 0; t < n; ++t) {
    const float* x = row_f32(p.x, t);
    if (p.act_quant_fp8) {
      std::memcpy(xq.data(), x, size_t(in) * 4);
      qdq_fp8(xq.data(), in, 128);
      x = xq.data();
    }
    float* y = row_f32(p.y, t);
    for (int64_t o = 0; o < out; ++o) {
      float v = dot(x, w + o * in, in);
      if (p.accumulate) v += y[o];
      y[o] = p.out_bf16 ? round_bf16(v) : v;
    }
  }
}

void CpuBackend::grouped_linear(const GroupedLinearParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t groups = p.x.shape[1];
  const int64_t in_g = p.x.shape[2];
  const int64_t out_g = p.y.shape[2];
  check_f32(p.x, n, groups * in_g, "grouped_linear x");
  check_f32(p.y, n, groups * out_g, "grouped_linear y");
  CHECK_EQ(p.w.cols, in_g);
  CHECK_EQ(p.w.rows, groups * out_g);
  const int g_end = p.g_end < 0 ? int(groups) : p.g_end;
  const float* w = weight_f32(p.w);
  for (int64_t t = 0; t < n; ++t) {
    const float* x = row_f32(p.x, t);
    float* y = row_f32(p.y, t);
    for (int64_t g = p.g_begin; g < g_end; ++g)
      for (int64_t o = 0; o < out_g; ++o) {
        const float v = dot(x + g * in_g, w + (g * out_g + o) * in_g, in_g);
        y[g * out_g + o] = p.out_bf16 ? round_bf16(v) : v;
      }
  }
}

}  // namespace v4rt::kernels::cpu
