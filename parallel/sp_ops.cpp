// SPDX-License-Identifier: MIT
// SpOps on host memory (see sp_ops.h): plain loops, the reference of the CUDA kernels.
#include "parallel/sp_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/dtype.h"
#include "parallel/sp.h"
#include "parallel/sp_merge_rules.h"

namespace v4rt::parallel {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

class HostSpOps final : public SpOps {
 public:
  Device device() const override { return Device::kHost; }

  void mask_invisible(float* scores, int64_t rows, int64_t num_local, const SpPartition& part, int64_t pos_begin,
                      int ratio) override {
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t visible = (pos_begin + t + 1) / ratio;
      for (int64_t j = 0; j < num_local; ++j)
        if (part.to_global(j) >= visible) scores[t * num_local + j] = kNegInf;
    }
  }

  void visible_list(int32_t* list, int64_t rows, int64_t num_local, const SpPartition& part, int64_t pos_begin,
                    int ratio) override {
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t visible = (pos_begin + t + 1) / ratio;
      for (int64_t j = 0; j < num_local; ++j) list[t * num_local + j] = part.to_global(j) < visible ? int32_t(j) : -1;
    }
  }

  void merge_topk(const float* values, const int32_t* local_idx, int64_t rows, int k, const SpPartition& part,
                  int32_t* sel) override {
    const int n = part.sp_size;
    for (int64_t t = 0; t < rows; ++t) {
      int32_t* out = sel + t * k;
      for (int i = 0; i < k; ++i) out[i] = -1;
      for (int p = 0; p < n; ++p) {
        const float* pv = values + (int64_t(p) * rows + t) * k;
        const int32_t* pi = local_idx + (int64_t(p) * rows + t) * k;
        for (int i = 0; i < k; ++i) {
          if (!sp_rules::valid(pv[i], pi[i])) break;  // invalid slots are last
          const int64_t g = sp_rules::to_global(pi[i], n, p, part.block);
          int rank = i;  // the slots before it in its own list come before it
          for (int q = 0; q < n && rank < k; ++q) {
            if (q == p) continue;
            rank += sp_rules::count_before(values + (int64_t(q) * rows + t) * k,
                                           local_idx + (int64_t(q) * rows + t) * k, k, q, n, part.block, pv[i], g);
          }
          if (rank < k) out[rank] = p == part.sp_idx ? pi[i] : -1;
        }
      }
    }
  }

  void merge_attention(const float* o, const float* lse, const float* sink, int num_parts, int64_t rows, int64_t heads,
                       int64_t head_dim, bool round_bf16, float* out) override {
    for (int64_t r = 0; r < rows; ++r) {
      float* y = out + r * head_dim;
      float m = kNegInf;
      for (int p = 0; p < num_parts; ++p) m = std::max(m, lse[p * rows + r]);
      std::fill(y, y + head_dim, 0.f);
      if (m == kNegInf) continue;  // nothing attended anywhere (cannot happen: the window holds t)
      float den = std::exp(sink[r % heads] - m);
      for (int p = 0; p < num_parts; ++p) {
        const float l = lse[p * rows + r];
        if (l == kNegInf) continue;
        const float f = std::exp(l - m);
        den += f;
        const float* op = o + (int64_t(p) * rows + r) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) y[d] += op[d] * f;
      }
      for (int64_t d = 0; d < head_dim; ++d) y[d] = round_bf16 ? v4rt::round_bf16(y[d] / den) : y[d] / den;
    }
  }
};

}  // namespace

std::unique_ptr<SpOps> make_host_sp_ops() { return std::make_unique<HostSpOps>(); }

}  // namespace v4rt::parallel
