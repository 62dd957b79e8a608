// SPDX-License-Identifier: MIT
// SP kernels (see sp_kernels.h, parallel/sp_ops.h):
//  - mask / visible list: one thread per (row, local entry), grid-stride;
//  - top-k merge: one block per row; every valid slot of every rank's list finds its place in the
//    global order as its position in its own list plus, per other list, a binary search for the
//    slots that come before it (sp_merge_rules.h), and writes itself there when it is < k. No sort,
//    no shared-memory staging: n * k <= 8 * 2048 slots per row;
//  - attention merge: one block per (token, head) row, threads over head_dim, the ranks summed in
//    rank order as the host loop does.
#include "parallel/cuda/sp_kernels.h"

#include "kernels/cuda/device_math.cuh"
#include "parallel/sp_merge_rules.h"

namespace v4rt::parallel::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t global_of(int64_t local, SpShape p) {
  return sp_rules::to_global(local, p.sp_size, p.sp_idx, p.block);
}

__global__ void mask_invisible_kernel(float* scores, int64_t rows, int64_t num_local, SpShape part, int64_t pos_begin,
                                      int ratio) {
  const int64_t total = rows * num_local;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / num_local, j = i % num_local;
    if (global_of(j, part) >= (pos_begin + t + 1) / ratio) scores[i] = -INFINITY;
  }
}

__global__ void visible_list_kernel(int32_t* list, int64_t rows, int64_t num_local, SpShape part, int64_t pos_begin,
                                    int ratio) {
  const int64_t total = rows * num_local;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / num_local, j = i % num_local;
    list[i] = global_of(j, part) < (pos_begin + t + 1) / ratio ? int32_t(j) : -1;
  }
}

// grid: rows (y-stride over gridDim.x for > 65,535 is not needed: x holds up to 2^31 - 1 rows).
__global__ void merge_topk_kernel(const float* values, const int32_t* local_idx, int64_t rows, int k, SpShape part,
                                  int32_t* sel) {
  const int64_t t = blockIdx.x;
  int32_t* out = sel + t * k;
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = -1;
  __syncthreads();
  const int n = part.sp_size;
  for (int s = threadIdx.x; s < n * k; s += blockDim.x) {
    const int p = s / k, i = s % k;
    const float v = values[(int64_t(p) * rows + t) * k + i];
    const int32_t li = local_idx[(int64_t(p) * rows + t) * k + i];
    if (!sp_rules::valid(v, li)) continue;
    const int64_t g = sp_rules::to_global(li, n, p, part.block);
    int rank = i;
    for (int q = 0; q < n && rank < k; ++q) {
      if (q == p) continue;
      rank += sp_rules::count_before(values + (int64_t(q) * rows + t) * k, local_idx + (int64_t(q) * rows + t) * k, k,
                                     q, n, part.block, v, g);
    }
    if (rank < k) out[rank] = p == part.sp_idx ? li : -1;
  }
}

__global__ void merge_attention_kernel(const float* o, const float* lse, const float* sink, int num_parts,
                                       int64_t rows, int64_t heads, int64_t head_dim, bool round_out, float* out) {
  const int64_t r = blockIdx.x;
  float m = -INFINITY;
  for (int p = 0; p < num_parts; ++p) m = fmaxf(m, lse[p * rows + r]);
  float* y = out + r * head_dim;
  if (m == -INFINITY) {
    for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) y[d] = 0.f;
    return;
  }
  float den = expf(sink[r % heads] - m);
  for (int p = 0; p < num_parts; ++p) {
    const float l = lse[p * rows + r];
    if (l != -INFINITY) den += expf(l - m);
  }
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int p = 0; p < num_parts; ++p) {
      const float l = lse[p * rows + r];
      if (l == -INFINITY) continue;
      acc += o[(int64_t(p) * rows + r) * head_dim + d] * expf(l - m);
    }
    const float v = acc / den;
    y[d] = round_out ? kernels::cuda::round_bf16(v) : v;
  }
}

unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return unsigned(blocks < 65536 * 8 ? (blocks > 0 ? blocks : 1) : 65536 * 8);
}

}  // namespace

void launch_sp_mask_invisible(float* scores, int64_t rows, int64_t num_local, SpShape part, int64_t pos_begin,
                              int ratio, cudaStream_t stream) {
  if (rows * num_local == 0) return;
  mask_invisible_kernel<<<grid_for(rows * num_local), kThreads, 0, stream>>>(scores, rows, num_local, part, pos_begin,
                                                                              ratio);
}

void launch_sp_visible_list(int32_t* list, int64_t rows, int64_t num_local, SpShape part, int64_t pos_begin, int ratio,
                            cudaStream_t stream) {
  if (rows * num_local == 0) return;
  visible_list_kernel<<<grid_for(rows * num_local), kThreads, 0, stream>>>(list, rows, num_local, part, pos_begin,
                                                                            ratio);
}

void launch_sp_merge_topk(const float* values, const int32_t* local_idx, int64_t rows, int k, SpShape part,
                          int32_t* sel, cudaStream_t stream) {
  if (rows == 0 || k == 0) return;
  merge_topk_kernel<<<unsigned(rows), kThreads, 0, stream>>>(values, local_idx, rows, k, part, sel);
}

void launch_sp_merge_attention(const float* o, const float* lse, const float* sink, int num_parts, int64_t rows,
                               int64_t heads, int64_t head_dim, bool round_bf16, float* out, cudaStream_t stream) {
  if (rows == 0) return;
  merge_attention_kernel<<<unsigned(rows), 128, 0, stream>>>(o, lse, sink, num_parts, rows, heads, head_dim,
                                                             round_bf16, out);
}

}  // namespace v4rt::parallel::cuda
