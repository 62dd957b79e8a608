// SPDX-License-Identifier: MIT
// Embedding lookup (replicated into the hyper-connection streams), elementwise add, and the
// quantize-dequantize ops of the official numerics (bf16 rounding, FP8 e4m3 and FP4 e2m1 blocks).
#include <cstring>

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

void CpuBackend::embedding(const EmbeddingParams& p) {
  const int64_t n = p.ids.shape[0];
  const int64_t hidden = p.table.cols;
  const int64_t replicas = p.out.ndim == 3 ? p.out.shape[1] : 1;
  CHECK(p.ids.dtype == DType::kI32);
  check_f32(p.out, n, replicas * hidden, "embedding out");
  const float* table = weight_f32(p.table);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = static_cast<const int32_t*>(p.ids.data)[t];
    CHECK(id >= 0 && id < p.table.rows) << "token id " << id << " outside the vocabulary of " << p.table.rows;
    for (int64_t r = 0; r < replicas; ++r)
      std::memcpy(row_f32(p.out, t) + r * hidden, table + int64_t(id) * hidden, size_t(hidden) * 4);
  }
}

void CpuBackend::add(const AddParams& p) {
  const int64_t n = p.a.shape[0];
  const int64_t w = row_width(p.a);
  check_f32(p.b, n, w, "add b");
  check_f32(p.out, n, w, "add out");
  for (int64_t r = 0; r < n; ++r) {
    const float* a = row_f32(p.a, r);
    const float* b = row_f32(p.b, r);
    float* o = row_f32(p.out, r);
    for (int64_t i = 0; i < w; ++i) o[i] = p.out_bf16 ? round_bf16(a[i] + b[i]) : a[i] + b[i];
  }
}

void CpuBackend::qdq(const QdqParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t w = row_width(p.x);
  check_f32(p.x, n, w, "qdq x");
  CHECK_GT(p.block, 0);
  for (int64_t r = 0; r < n; ++r) {
    float* x = row_f32(p.x, r);
    switch (p.format) {
      case QdqFormat::kBf16: round_bf16_inplace(x, w); break;
      case QdqFormat::kFp8E4M3: qdq_fp8(x, w, p.block); break;
      case QdqFormat::kFp4E2M1: qdq_fp4(x, w, p.block); break;
    }
  }
}

}  // namespace v4rt::kernels::cpu
