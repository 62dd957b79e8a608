// SPDX-License-Identifier: MIT
// Sparse attention with a per-head sink over window + compressed candidates (spec §5.6): online
// softmax over the candidate list in blocks of 64, window first, exactly as the reference kernel
// walks it (which fixes where the bf16 rounding of P happens in the official mode).
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/kv_rows.h"

namespace v4rt::kernels::cpu {

namespace {
constexpr int kBlock = 64;
}

void CpuBackend::sparse_attention(const SparseAttentionParams& p) {
  const int64_t n = p.q.shape[0];
  const int64_t heads = p.q.shape[1];
  const int64_t dim = p.q.shape[2];
  const int h_end = p.h_end < 0 ? int(heads) : p.h_end;
  check_f32(p.q, n, heads * dim, "attention q");
  check_f32(p.out, n, heads * dim, "attention out");
  const int64_t num_window = p.window_kv.shape[0];
  check_f32(p.window_kv, num_window, dim, "attention window_kv");
  // Compact rows (contiguous or paged) decode on first use.
  KvRowReader comp(p.comp_kv, p.comp_layout, p.comp_blocks, dim, "attention comp_kv");
  const int64_t num_comp = comp.rows();
  const bool has_list = p.comp_idx.data != nullptr;
  const int64_t num_cand = has_list ? p.comp_idx.shape[1] : 0;
  CHECK(!has_list || p.comp_idx.dtype == DType::kI32);
  const float* sink = weight_f32(p.sink);

  std::vector<const float*> cand;
  std::vector<float> z, acc(static_cast<size_t>(dim));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = p.pos_begin + t;
    cand.clear();
    const int64_t first = std::max<int64_t>(0, pos - p.window + 1);
    for (int64_t s = first; s <= pos; ++s) {
      const int64_t row = s - p.window_pos0;
      CHECK(row >= 0 && row < num_window) << "window position " << s << " not held (rows from " << p.window_pos0 << ")";
      cand.push_back(row_f32(p.window_kv, row));
    }
    if (has_list) {
      const int32_t* idx = row_i32(p.comp_idx, t);
      for (int64_t i = 0; i < num_cand; ++i) {
        if (idx[i] < 0) {
          cand.push_back(nullptr);
          continue;
        }
        CHECK_LT(idx[i], num_comp) << "compressed candidate out of range";
        cand.push_back(comp.row(idx[i]));
      }
    } else if (p.comp_ratio > 0) {
      const int64_t visible = std::min<int64_t>(num_comp, (pos + 1) / p.comp_ratio);
      for (int64_t j = 0; j < visible; ++j) cand.push_back(comp.row(j));
    }
    z.resize(cand.size());
    for (int h = p.h_begin; h < h_end; ++h) {
      const float* q = row_f32(p.q, t) + h * dim;
      for (size_t i = 0; i < cand.size(); ++i) z[i] = cand[i] ? dot(q, cand[i], dim) * p.softmax_scale : -INFINITY;
      float m = -INFINITY, den = 0.0f;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (size_t b = 0; b < cand.size(); b += kBlock) {
        const size_t e = std::min(cand.size(), b + kBlock);
        float mb = m;
        for (size_t i = b; i < e; ++i) mb = std::max(mb, z[i]);
        if (mb == -INFINITY) continue;  // a block of absent candidates before any valid one
        const float rescale = m == -INFINITY ? 0.0f : std::exp(m - mb);
        den *= rescale;
        for (int64_t d = 0; d < dim; ++d) acc[size_t(d)] *= rescale;
        for (size_t i = b; i < e; ++i) {
          if (!cand[i]) continue;
          const float pe = std::exp(z[i] - mb);
          den += pe;
          const float pv = p.bf16_probs ? round_bf16(pe) : pe;
          for (int64_t d = 0; d < dim; ++d) acc[size_t(d)] += pv * cand[i][d];
        }
        m = mb;
      }
      if (p.include_sink) den += std::exp(sink[h] - m);
      float* o = row_f32(p.out, t) + h * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] = p.out_bf16 ? round_bf16(acc[size_t(d)] / den) : acc[size_t(d)] / den;
      if (p.lse.data) row_f32(p.lse, t)[h] = m + std::log(den);
    }
  }
}

}  // namespace v4rt::kernels::cpu
