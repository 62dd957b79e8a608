// SPDX-License-Identifier: MIT
// Manifold-constrained hyper-connections (spec §4): hc_pre (mix, Sinkhorn normalisation, collapse),
// hc_post (expand + residual mix) and hc_head (final collapse).
#include <cmath>

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

namespace {
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// rsqrt(mean(x^2) + eps) over n values.
float rms_scale(const float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
  return 1.0f / std::sqrt(float(sum / double(n)) + eps);
}
}  // namespace

void CpuBackend::hc_pre(const HcPreParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t hc = p.x.shape[1];
  const int64_t hidden = p.x.shape[2];
  const int64_t nmix = (2 + hc) * hc;
  check_f32(p.x, n, hc * hidden, "hc_pre x");
  check_f32(p.a, n, hidden, "hc_pre a");
  check_f32(p.post, n, hc, "hc_pre post");
  check_f32(p.comb, n, hc * hc, "hc_pre comb");
  CHECK_EQ(p.fn.rows, nmix);
  CHECK_EQ(p.fn.cols, hc * hidden);
  const float* fn = weight_f32(p.fn);
  const float* base = weight_f32(p.base);
  const float* scale = weight_f32(p.scale);
  std::vector<float> mix(static_cast<size_t>(nmix)), c(static_cast<size_t>(hc * hc));
  for (int64_t t = 0; t < n; ++t) {
    const float* x = row_f32(p.x, t);
    const float rs = rms_scale(x, hc * hidden, p.norm_eps);
    for (int64_t m = 0; m < nmix; ++m) mix[size_t(m)] = dot(fn + m * hc * hidden, x, hc * hidden) * rs;
    std::vector<float> pre(static_cast<size_t>(hc));
    float* post = row_f32(p.post, t);
    for (int64_t j = 0; j < hc; ++j) {
      pre[size_t(j)] = sigmoid(mix[size_t(j)] * scale[0] + base[j]) + p.hc_eps;
      post[j] = 2.0f * sigmoid(mix[size_t(hc + j)] * scale[1] + base[hc + j]);
    }
    for (int64_t j = 0; j < hc; ++j) {  // row softmax + eps
      float* row = &c[size_t(j * hc)];
      float mx = -INFINITY;
      for (int64_t k = 0; k < hc; ++k) {
        row[k] = mix[size_t(2 * hc + j * hc + k)] * scale[2] + base[2 * hc + j * hc + k];
        mx = std::max(mx, row[k]);
      }
      float sum = 0.0f;
      for (int64_t k = 0; k < hc; ++k) sum += (row[k] = std::exp(row[k] - mx));
      for (int64_t k = 0; k < hc; ++k) row[k] = row[k] / sum + p.hc_eps;
    }
    auto normalize_cols = [&] {
      for (int64_t k = 0; k < hc; ++k) {
        float sum = 0.0f;
        for (int64_t j = 0; j < hc; ++j) sum += c[size_t(j * hc + k)];
        for (int64_t j = 0; j < hc; ++j) c[size_t(j * hc + k)] /= (sum + p.hc_eps);
      }
    };
    auto normalize_rows = [&] {
      for (int64_t j = 0; j < hc; ++j) {
        float sum = 0.0f;
        for (int64_t k = 0; k < hc; ++k) sum += c[size_t(j * hc + k)];
        for (int64_t k = 0; k < hc; ++k) c[size_t(j * hc + k)] /= (sum + p.hc_eps);
      }
    };
    normalize_cols();
    for (int it = 0; it < p.sinkhorn_iters - 1; ++it) {
      normalize_rows();
      normalize_cols();
    }
    float* comb = row_f32(p.comb, t);
    for (int64_t i = 0; i < hc * hc; ++i) comb[i] = c[size_t(i)];
    float* a = row_f32(p.a, t);
    for (int64_t d = 0; d < hidden; ++d) {
      float s = 0.0f;
      for (int64_t j = 0; j < hc; ++j) s += pre[size_t(j)] * x[j * hidden + d];
      a[d] = p.out_bf16 ? round_bf16(s) : s;
    }
  }
}

void CpuBackend::hc_post(const HcPostParams& p) {
  const int64_t n = p.x_old.shape[0];
  const int64_t hc = p.x_old.shape[1];
  const int64_t hidden = p.x_old.shape[2];
  check_f32(p.o, n, hidden, "hc_post o");
  check_f32(p.x_new, n, hc * hidden, "hc_post x_new");
  CHECK(p.x_new.data != p.x_old.data) << "hc_post x_new must not alias x_old";
  for (int64_t t = 0; t < n; ++t) {
    const float* o = row_f32(p.o, t);
    const float* x = row_f32(p.x_old, t);
    const float* post = row_f32(p.post, t);
    const float* comb = row_f32(p.comb, t);
    float* y = row_f32(p.x_new, t);
    for (int64_t k = 0; k < hc; ++k)
      for (int64_t d = 0; d < hidden; ++d) {
        float s = post[k] * o[d];
        for (int64_t j = 0; j < hc; ++j) s += comb[j * hc + k] * x[j * hidden + d];
        y[k * hidden + d] = p.out_bf16 ? round_bf16(s) : s;
      }
  }
}

void CpuBackend::hc_head(const HcHeadParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t hc = p.x.shape[1];
  const int64_t hidden = p.x.shape[2];
  check_f32(p.y, n, hidden, "hc_head y");
  CHECK_EQ(p.fn.rows, hc);
  const float* fn = weight_f32(p.fn);
  const float* base = weight_f32(p.base);
  const float* scale = weight_f32(p.scale);
  std::vector<float> pre(static_cast<size_t>(hc));
  for (int64_t t = 0; t < n; ++t) {
    const float* x = row_f32(p.x, t);
    const float rs = rms_scale(x, hc * hidden, p.norm_eps);
    for (int64_t j = 0; j < hc; ++j)
      pre[size_t(j)] = sigmoid(dot(fn + j * hc * hidden, x, hc * hidden) * rs * scale[0] + base[j]) + p.hc_eps;
    float* y = row_f32(p.y, t);
    for (int64_t d = 0; d < hidden; ++d) {
      float s = 0.0f;
      for (int64_t j = 0; j < hc; ++j) s += pre[size_t(j)] * x[j * hidden + d];
      y[d] = p.out_bf16 ? round_bf16(s) : s;
    }
  }
}

}  // namespace v4rt::kernels::cpu
