// SPDX-License-Identifier: MIT
// RMSNorm (weighted, and the unweighted per-head query norm with its bf16 arithmetic variant,
// spec §2.4) and interleaved partial RoPE on the trailing dims of each head (spec §2.5).
#include <cmath>

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

void CpuBackend::rms_norm(const RmsNormParams& p) {
  const int64_t rows = p.x.shape[0];
  const int64_t dim = row_width(p.x);
  check_f32(p.y, rows, dim, "rms_norm y");
  const float* w = p.weight.empty() ? nullptr : weight_f32(p.weight);
  if (w) CHECK_EQ(p.weight.rows * p.weight.cols, dim) << "rms_norm weight size";
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = row_f32(p.x, r);
    float* y = row_f32(p.y, r);
    if (p.bf16_arith) {
      // sq = bf16(x^2); m = bf16(Σ sq / dim); v = bf16(m + eps); s = bf16(rsqrt(v)); y = bf16(x s)
      float sum = 0.0f;
      for (int64_t i = 0; i < dim; ++i) sum += round_bf16(x[i] * x[i]);
      const float m = round_bf16(sum / float(dim));
      const float v = round_bf16(m + p.eps);
      const float s = round_bf16(1.0f / std::sqrt(v));
      for (int64_t i = 0; i < dim; ++i) {
        float o = round_bf16(x[i] * s);
        if (w) o = round_bf16(o * w[i]);
        y[i] = o;
      }
      continue;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += double(x[i]) * double(x[i]);
    const float s = 1.0f / std::sqrt(float(sum / double(dim)) + p.eps);
    for (int64_t i = 0; i < dim; ++i) {
      float o = x[i] * s;
      if (w) o *= w[i];
      y[i] = p.out_bf16 ? round_bf16(o) : o;
    }
  }
}

void CpuBackend::rope(const RopeParams& p) {
  const int64_t rows = p.x.shape[0];
  const int64_t heads = p.x.ndim == 3 ? p.x.shape[1] : 1;
  const int64_t head_dim = p.x.shape[size_t(p.x.ndim - 1)];
  CHECK_EQ(row_width(p.x), heads * head_dim);
  CHECK(p.rope_dim > 0 && p.rope_dim % 2 == 0 && p.rope_dim <= head_dim) << "rope_dim " << p.rope_dim;
  CHECK(p.inv_freq != nullptr);
  const int half = p.rope_dim / 2;
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  int64_t run = 0;  // with runs: the run holding row r
  if (p.runs) {
    int64_t next = 0;
    for (int64_t k = 0; k < p.num_runs; ++k) {
      CHECK(p.runs[k].row_begin == next && p.runs[k].num_rows >= 0) << "rope runs must tile the rows in order";
      next += p.runs[k].num_rows;
    }
    CHECK_EQ(next, rows) << "rope runs cover " << next << " of " << rows << " rows";
  }
  for (int64_t r = 0; r < rows; ++r) {
    float pos;
    if (p.runs) {
      while (r >= p.runs[run].row_begin + p.runs[run].num_rows) ++run;
      pos = float(p.runs[run].pos_begin + (r - p.runs[run].row_begin) * p.runs[run].pos_step);
    } else {
      pos = p.positions ? float(p.positions[r]) : float(p.pos_begin + r * p.pos_step);
    }
    for (int i = 0; i < half; ++i) {
      const float theta = pos * p.inv_freq[i];
      cs[size_t(i)] = std::cos(theta);
      sn[size_t(i)] = p.inverse ? -std::sin(theta) : std::sin(theta);
    }
    float* row = row_f32(p.x, r);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = row + h * head_dim + (head_dim - p.rope_dim);
      for (int i = 0; i < half; ++i) {
        const float a = v[2 * i], b = v[2 * i + 1];
        float re = a * cs[size_t(i)] - b * sn[size_t(i)];
        float im = b * cs[size_t(i)] + a * sn[size_t(i)];
        if (p.out_bf16) {
          re = round_bf16(re);
          im = round_bf16(im);
        }
        v[2 * i] = re;
        v[2 * i + 1] = im;
      }
    }
  }
}

}  // namespace v4rt::kernels::cpu
