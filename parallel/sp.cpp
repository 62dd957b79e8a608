// SPDX-License-Identifier: MIT
// SP entry ownership, distributed top-k and the log-sum-exp attention merge (see sp.h).
#include "parallel/sp.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace v4rt::parallel {

int64_t SpPartition::num_local(int64_t num_entries) const {
  const int64_t full = num_entries / block, rem = num_entries % block;
  int64_t blocks = full > sp_idx ? (full - sp_idx + sp_size - 1) / sp_size : 0;
  int64_t n = blocks * block;
  if (rem > 0 && full % sp_size == sp_idx) n += rem;
  return n;
}

void sp_select(cluster::Comm& sp, SpOps& ops, kernels::Backend& be, const SpPartition& part, const TensorView& scores,
               int64_t rows, int64_t pos_begin, int ratio, int k, const TensorView& sel) {
  CHECK_EQ(sp.size(), part.sp_size) << "SP group size vs partition";
  CHECK(sp.device() == be.device() && ops.device() == be.device()) << "SP select: group '" << sp.name()
                                                                   << "' and its ops must use the backend's memory";
  CHECK(sel.dtype == DType::kI32 && sel.contiguous() && sel.shape[0] == rows && sel.numel() == rows * k)
      << "SP select output " << sel.shape_str();
  const int64_t count = rows * k;
  Buffer values = be.alloc(size_t(count) * 4), local = be.alloc(size_t(count) * 4);
  kernels::TopkParams tp;
  tp.out_values = TensorView(values.data(), DType::kF32, {rows, k}, be.device());
  tp.out_idx = TensorView(local.data(), DType::kI32, {rows, k}, be.device());
  tp.k = k;
  Buffer none;
  if (scores.data != nullptr && scores.shape[1] > 0) {
    CHECK(scores.dtype == DType::kF32 && scores.contiguous() && scores.shape[0] == rows) << scores.shape_str();
    ops.mask_invisible(static_cast<float*>(scores.data), rows, scores.shape[1], part, pos_begin, ratio);
    tp.scores = scores;
  } else {  // no key here yet: every slot of this rank's lists is empty
    none = be.alloc(size_t(rows) * 4);
    tp.scores = TensorView(none.data(), DType::kF32, {rows, 1}, be.device());
    be.fill(tp.scores, -INFINITY);
  }
  be.topk(tp);
  const int n = sp.size();
  Buffer all_values = be.alloc(size_t(n * count) * 4), all_local = be.alloc(size_t(n * count) * 4);
  sp.all_gather(values.data(), all_values.data(), count, DType::kF32);
  sp.all_gather(local.data(), all_local.data(), count, DType::kI32);
  ops.merge_topk(static_cast<const float*>(all_values.data()), static_cast<const int32_t*>(all_local.data()), rows, k,
                 part, static_cast<int32_t*>(sel.data));
}

void sp_attention_merge(cluster::Comm& sp, SpOps& ops, kernels::Backend& be, const TensorView& o, const TensorView& lse,
                        const float* sink, bool round_bf16) {
  CHECK(o.dtype == DType::kF32 && o.contiguous() && o.ndim == 3) << "SP merge output " << o.shape_str();
  const int64_t heads = o.shape[1], head_dim = o.shape[2], rows = o.shape[0] * heads;
  CHECK(lse.dtype == DType::kF32 && lse.contiguous() && lse.numel() == rows) << "SP merge lse " << lse.shape_str();
  const int n = sp.size();
  Buffer all_o = be.alloc(size_t(n * rows * head_dim) * 4), all_lse = be.alloc(size_t(n * rows) * 4);
  sp.all_gather(o.data, all_o.data(), rows * head_dim, DType::kF32);
  sp.all_gather(lse.data, all_lse.data(), rows, DType::kF32);
  ops.merge_attention(static_cast<const float*>(all_o.data()), static_cast<const float*>(all_lse.data()), sink, n, rows,
                      heads, head_dim, round_bf16, static_cast<float*>(o.data));
}

}  // namespace v4rt::parallel
