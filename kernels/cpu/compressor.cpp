// SPDX-License-Identifier: MIT
// Compressor pooling (spec §5.4: channel-wise softmax over a block of tokens, with the CSA overlap
// of the previous block through the first half of the channels) and the Walsh-Hadamard rotation
// of the indexer (spec §2.7).
#include <cmath>

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

void CpuBackend::compressor_pool(const CompressorPoolParams& p) {
  const int m = p.ratio;
  const int d = p.head_dim;
  const int c = p.overlap ? 2 : 1;
  const int64_t rows = p.kv.shape[0];
  check_f32(p.kv, rows, int64_t(c) * d, "compressor_pool kv");
  check_f32(p.score, rows, int64_t(c) * d, "compressor_pool score");
  check_f32(p.out, p.num_entries, d, "compressor_pool out");
  CHECK_GE(rows, (p.num_entries + (p.overlap ? 1 : 0)) * m) << "compressor_pool rows";
  CHECK_EQ(p.ape.rows, m);
  CHECK_EQ(p.ape.cols, int64_t(c) * d);
  const float* ape = weight_f32(p.ape);
  const int slots = c * m;
  std::vector<float> logit(static_cast<size_t>(slots)), value(static_cast<size_t>(slots));
  for (int64_t e = 0; e < p.num_entries; ++e) {
    float* out = row_f32(p.out, e);
    for (int ch = 0; ch < d; ++ch) {
      // Slots: (overlap) previous block through channel ch, then current block through d + ch.
      for (int s = 0; s < slots; ++s) {
        const int64_t r = e * m + s;
        const int col = (p.overlap && s >= m) ? d + ch : ch;
        logit[size_t(s)] = row_f32(p.score, r)[col] + ape[(s % m) * c * d + col];
        value[size_t(s)] = row_f32(p.kv, r)[col];
      }
      float mx = -INFINITY;
      for (int s = 0; s < slots; ++s) mx = std::max(mx, logit[size_t(s)]);
      float den = 0.0f, num = 0.0f;
      for (int s = 0; s < slots; ++s) {
        if (logit[size_t(s)] == -INFINITY) continue;
        const float w = std::exp(logit[size_t(s)] - mx);
        den += w;
        num += w * value[size_t(s)];
      }
      const float z = num / den;
      out[ch] = p.out_bf16 ? round_bf16(z) : z;
    }
  }
}

void CpuBackend::hadamard(const HadamardParams& p) {
  const int64_t rows = p.x.shape[0];
  const int64_t dim = row_width(p.x);
  CHECK(dim > 0 && (dim & (dim - 1)) == 0) << "hadamard dim " << dim << " is not a power of two";
  const float scale = 1.0f / std::sqrt(float(dim));
  for (int64_t r = 0; r < rows; ++r) {
    float* x = row_f32(p.x, r);
    for (int64_t h = 1; h < dim; h *= 2)  // butterfly stages, natural (Sylvester) order
      for (int64_t i = 0; i < dim; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float a = x[j], b = x[j + h];
          x[j] = a + b;
          x[j + h] = a - b;
        }
    for (int64_t i = 0; i < dim; ++i) x[i] = p.out_bf16 ? round_bf16(x[i] * scale) : x[i] * scale;
  }
}

}  // namespace v4rt::kernels::cpu
