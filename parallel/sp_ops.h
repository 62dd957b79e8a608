// SPDX-License-Identifier: MIT
// SpOps: the per-row steps of sequence-parallel attention (sp.h) on the memory of the SP group's
// Comm: host loops for CPU ranks (sp_ops.cpp, the reference), CUDA kernels on the compute stream
// for CUDA ranks (parallel/cuda/cuda_sp_ops.cu). sp_select() and sp_attention_merge() in sp.h run
// the whole SP exchange through this interface and the Comm, so nothing crosses the host on GPU
// ranks, and the CPU tests under mpirun check the logic the GPU runs.
#pragma once

#include <cstdint>
#include <memory>

#include "cluster/comm.h"
#include "common/tensor.h"

namespace v4rt::parallel {

struct SpPartition;

class SpOps {
 public:
  virtual ~SpOps() = default;
  virtual Device device() const = 0;
  // scores [rows, num_local] F32 in place: -inf where local entry j is not visible to row t yet,
  // i.e. part.to_global(j) >= (pos_begin + t + 1) / ratio.
  virtual void mask_invisible(float* scores, int64_t rows, int64_t num_local, const SpPartition& part,
                              int64_t pos_begin, int ratio) = 0;
  // list [rows, num_local] I32: j where local entry j is visible to row t (as above), else -1.
  virtual void visible_list(int32_t* list, int64_t rows, int64_t num_local, const SpPartition& part,
                            int64_t pos_begin, int ratio) = 0;
  // The global top-k of every row from the SP ranks' local top-k lists, gathered: values [n, rows,
  // k] F32 and local indices [n, rows, k] I32 of rank p's entries, each list in descending value,
  // ties by lower index, invalid slots (index < 0 or value -inf) last. Global order: descending
  // value, ties by lower global index (exactly the single-rank top-k). sel [rows, k] I32 gets, in
  // that order, this rank's local index of the entries it owns and -1 for the others' and for the
  // slots past the valid candidates.
  virtual void merge_topk(const float* values, const int32_t* local_idx, int64_t rows, int k,
                          const SpPartition& part, int32_t* sel) = 0;
  // Log-sum-exp merge of the SP ranks' normalised partial outputs o [n, rows, head_dim] with their
  // log-sum-exp lse [n, rows] (row = token * heads + head; -inf: nothing attended), the sink [heads]
  // added once: M = max_p lse_p, out = sum_p o_p e^(lse_p - M) / (sum_p e^(lse_p - M) +
  // e^(sink - M)), summed in p order; rounded to bf16 when `round_bf16`. out [rows, head_dim].
  virtual void merge_attention(const float* o, const float* lse, const float* sink, int num_parts, int64_t rows,
                               int64_t heads, int64_t head_dim, bool round_bf16, float* out) = 0;
};

std::unique_ptr<SpOps> make_host_sp_ops();
#if defined(V4RT_HAVE_CUDA)
// Kernels on `stream`, the compute backend's (the SP Comm is ordered on it too).
std::unique_ptr<SpOps> make_cuda_sp_ops(cluster::StreamHandle stream);
#endif

}  // namespace v4rt::parallel
