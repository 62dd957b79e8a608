// SPDX-License-Identifier: MIT
// Mixture of experts (spec §6): the router (hash or score top-k with bias, sqrt-softplus scores),
// the routed expert loop over an owned expert range, and the clamped SwiGLU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "kernels/cpu/cpu_backend.h"

namespace v4rt::kernels::cpu {

namespace {
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }  // PyTorch threshold 20
float silu(float x) { return x / (1.0f + std::exp(-x)); }
float swiglu_one(float g, float u, float limit) {
  return silu(std::min(g, limit)) * std::clamp(u, -limit, limit);
}
}  // namespace

void CpuBackend::moe_gate(const MoeGateParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t hidden = p.gate.cols;
  const int64_t experts = p.gate.rows;
  check_f32(p.x, n, hidden, "moe_gate x");
  CHECK(p.out_idx.dtype == DType::kI32);
  check_f32(p.out_weight, n, p.topk, "moe_gate out_weight");
  const float* gate = weight_f32(p.gate);
  const float* bias = p.bias.empty() ? nullptr : weight_f32(p.bias);
  const bool hash = !p.tid2eid.empty();
  if (hash) {
    CHECK(p.tid2eid.dtype == DType::kI32);
    CHECK_EQ(p.tid2eid.cols, p.topk);
    CHECK(p.token_ids.dtype == DType::kI32);
  }
  std::vector<float> s(static_cast<size_t>(experts)), sel(static_cast<size_t>(experts));
  std::vector<int32_t> order(static_cast<size_t>(experts)), idx(static_cast<size_t>(p.topk));
  for (int64_t t = 0; t < n; ++t) {
    const float* x = row_f32(p.x, t);
    for (int64_t e = 0; e < experts; ++e) s[size_t(e)] = std::sqrt(softplus(dot(gate + e * hidden, x, hidden)));
    if (hash) {
      const int32_t tok = static_cast<const int32_t*>(p.token_ids.data)[t];
      CHECK(tok >= 0 && tok < p.tid2eid.rows) << "token id " << tok << " outside tid2eid";
      const int32_t* row = static_cast<const int32_t*>(p.tid2eid.data) + int64_t(tok) * p.topk;
      for (int k = 0; k < p.topk; ++k) idx[size_t(k)] = row[k];
    } else {
      for (int64_t e = 0; e < experts; ++e) sel[size_t(e)] = s[size_t(e)] + (bias ? bias[e] : 0.0f);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + p.topk, order.end(), [&](int32_t a, int32_t b) {
        return sel[size_t(a)] > sel[size_t(b)] || (sel[size_t(a)] == sel[size_t(b)] && a < b);
      });
      for (int k = 0; k < p.topk; ++k) idx[size_t(k)] = order[size_t(k)];
    }
    std::sort(idx.begin(), idx.end());
    float sum = 0.0f;
    for (int k = 0; k < p.topk; ++k) {
      CHECK(idx[size_t(k)] >= 0 && idx[size_t(k)] < experts) << "expert id " << idx[size_t(k)];
      sum += s[size_t(idx[size_t(k)])];
    }
    int32_t* oi = row_i32(p.out_idx, t);
    float* ow = row_f32(p.out_weight, t);
    for (int k = 0; k < p.topk; ++k) {
      oi[k] = idx[size_t(k)];
      ow[k] = s[size_t(idx[size_t(k)])] / (sum + 1e-20f) * p.route_scale;
    }
  }
}

void CpuBackend::moe_experts(const MoeExpertsParams& p) {
  const int64_t n = p.x.shape[0];
  const int64_t topk = p.idx.shape[1];
  const int64_t hidden = p.out.shape[1];
  check_f32(p.x, n, hidden, "moe_experts x");
  check_f32(p.out, n, hidden, "moe_experts out");
  check_f32(p.weight, n, topk, "moe_experts weight");
  if (!p.accumulate) {
    for (int64_t t = 0; t < n; ++t) std::fill_n(row_f32(p.out, t), hidden, 0.0f);
  }
  std::vector<float> xq(static_cast<size_t>(hidden)), g, u, y(static_cast<size_t>(hidden));
  for (int e = p.e_begin; e < p.e_end; ++e) {
    const WeightView& w1 = p.w1[e];
    const WeightView& w2 = p.w2[e];
    const WeightView& w3 = p.w3[e];
    const int64_t inter = w1.rows;
    CHECK_EQ(w1.cols, hidden);
    CHECK_EQ(w2.rows, hidden);
    CHECK_EQ(w2.cols, inter);
    g.resize(size_t(inter));
    u.resize(size_t(inter));
    const float* f1 = weight_f32(w1);
    const float* f2 = weight_f32(w2);
    const float* f3 = weight_f32(w3);
    for (int64_t t = 0; t < n; ++t) {
      const int32_t* idx = row_i32(p.idx, t);
      int64_t slot = -1;
      for (int64_t k = 0; k < topk; ++k)
        if (idx[k] == e) slot = k;
      if (slot < 0) continue;
      const float rw = row_f32(p.weight, t)[slot];
      const float* x = row_f32(p.x, t);
      if (p.official) {
        std::memcpy(xq.data(), x, size_t(hidden) * 4);
        qdq_fp8(xq.data(), hidden, 128);
        x = xq.data();
      }
      for (int64_t i = 0; i < inter; ++i) {
        float a = dot(f1 + i * hidden, x, hidden), b = dot(f3 + i * hidden, x, hidden);
        if (p.official) {
          a = round_bf16(a);
          b = round_bf16(b);
        }
        g[size_t(i)] = swiglu_one(a, b, p.swiglu_limit);
        if (p.official) g[size_t(i)] = round_bf16(g[size_t(i)] * rw);
      }
      if (p.official) qdq_fp8(g.data(), inter, 128);
      float* out = row_f32(p.out, t);
      for (int64_t d = 0; d < hidden; ++d) {
        const float v = dot(f2 + d * inter, g.data(), inter);
        out[d] += p.official ? round_bf16(v) : v * rw;
      }
    }
  }
}

void CpuBackend::swiglu(const SwigluParams& p) {
  const int64_t n = p.gate.shape[0];
  const int64_t inter = row_width(p.gate);
  check_f32(p.up, n, inter, "swiglu up");
  check_f32(p.h, n, inter, "swiglu h");
  for (int64_t t = 0; t < n; ++t) {
    const float* g = row_f32(p.gate, t);
    const float* u = row_f32(p.up, t);
    float* h = row_f32(p.h, t);
    const float rw = p.row_weight.data ? static_cast<const float*>(p.row_weight.data)[t] : 1.0f;
    for (int64_t i = 0; i < inter; ++i) {
      float v = swiglu_one(g[i], u[i], p.limit);
      if (p.row_weight.data) v *= rw;
      h[i] = p.out_bf16 ? round_bf16(v) : v;
    }
  }
}

}  // namespace v4rt::kernels::cpu
