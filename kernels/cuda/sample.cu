// SPDX-License-Identifier: MIT
// Token sampling (SampleParams, kernels/backend.h): one launch for the whole batch, one 1024-thread
// block per row, nothing but the ids and the requested logprobs written.
//
// Method (per row). Logits are ordered by a 32-bit key that sorts like the float (NaN lowest, -0
// as +0); ties between equal keys go to the lower id, as in the CPU op.
//  1. One pass: the first maximum (key desc, id asc), and the online max / Σ exp of log_softmax at
//     temperature 1 (the logprobs). Greedy rows stop here.
//  2. Weights w = exp((l - max) / temperature) in fp32 (the CPU op's expression), held as fixed
//     point with 46 fractional bits, so every mass is an exact, order-independent integer sum
//     (deterministic under shared-memory atomics; at most 2^-46 per weight away from the CPU op's
//     fp64 sums, weights below 2^-47 count as 0).
//  3. top-k and top-p select a prefix of the key order without sorting: a radix select over the
//     key in three digits (11, 11, 10 bits; a 2048-bin histogram of counts and masses per pass,
//     the crossing bin found by a warp scan) finds the key K at which the prefix count reaches k
//     (or the prefix mass reaches ceil(top_p * mass of the top-k prefix)), the count and mass above
//     it, and how many of the ties at K the prefix takes (the lowest ids; for top-p the number
//     follows from the tie weight arithmetically). The nucleus is searched among keys above the
//     top-k key, or inside its ties.
//  4. The draw: target = floor(u * kept mass), u = sample_uniform(seed, position, draw); every
//     thread owns a contiguous segment of ids, sums its kept weights (and tie ranks, when only part
//     of the ties at K are kept), a block scan gives each segment its start, and the one segment
//     holding the target walks to the first id whose cumulative weight exceeds it.
//  5. top-n logprobs: a radix select by count for the n-th key, the n ids collected (ties by
//     rank as in 4) and ordered in shared memory.
// Reads of the row: 1 (greedy) up to 1 + 3 (top-k) + 3 (top-p) + 2..3 (draw) + 3..5 (top-n); a
// row of 129,280 F32 logits (517 KB) stays in L2 between passes for moderate batches. A few rows
// (decode at small batch) are instead spread over many blocks (sample_split.cu): three reads
// of the row by all SMs, then the passes above over a short candidate list.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/sample_common.cuh"

namespace v4rt::kernels::cuda {
namespace {

using namespace sample_detail;

__global__ void __launch_bounds__(kThreads) sample_kernel(const void* logits, bool bf16, int64_t stride, int64_t vocab,
                                                          const SampleRow* rows, SampleOut o) {
  pdl_enter();  // launch.cuh: programmatic dependent launch
  __shared__ Shared sm;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t r = blockIdx.x;
  const SampleRow s = rows[r];
  const Logits row = logits_row(logits, bf16, stride, r);

  // 1. first maximum and the temperature-1 log-sum-exp
  u64 best = 0;
  float om = -INFINITY, os = 0.0f;
  for (int64_t i = tid; i < vocab; i += kThreads) stats_add(row.ld(i), i, best, om, os);
  stats_warp_reduce(best, om, os);
  if (lane == 0) {
    sm.best[warp] = best;
    sm.om[warp] = om;
    sm.os[warp] = os;
  }
  __syncthreads();
  const RowStats st = stats_combine(sm.best, sm.om, sm.os);  // every thread, same order: uniform
  __syncthreads();
  sample_finish(FullRow{row, vocab}, row, vocab, s, r, st.argmax, st.mx, st.log_z, kUnknownTotal, kDrawHere, o, sm);
}

}  // namespace

void launch_sample(const SampleParams& p, cudaStream_t s) {
  const int64_t rows = p.logits.shape[0];
  const int64_t vocab = p.logits.ndim == 2 ? p.logits.shape[1] : 0;
  V4RT_REQUIRE(p.logits.ndim == 2 && vocab > 0 && vocab < (int64_t(1) << 31),
               "sample logits: expected [rows, vocab], got " << p.logits.shape_str());
  V4RT_REQUIRE((p.logits.dtype == DType::kF32 || p.logits.dtype == DType::kBF16) && p.logits.device == Device::kCuda &&
                   p.logits.stride[1] == 1,
               "sample logits: an F32 or BF16 device view with contiguous rows");
  V4RT_REQUIRE(rows == 0 || p.rows != nullptr, "sample: no SampleRow array for " << rows << " rows");
  V4RT_REQUIRE(p.out_ids.dtype == DType::kI32 && p.out_ids.numel() == rows,
               "sample out_ids: expected I32 [" << rows << "], got " << p.out_ids.shape_str());
  float* logprob = nullptr;
  if (p.out_logprob.data) {
    V4RT_REQUIRE(p.out_logprob.dtype == DType::kF32 && p.out_logprob.numel() == rows,
                 "sample out_logprob: expected F32 [" << rows << "], got " << p.out_logprob.shape_str());
    logprob = static_cast<float*>(p.out_logprob.data);
  }
  int max_n = 0;
  int32_t* top_ids = nullptr;
  float* top_lp = nullptr;
  int64_t top_stride = 0;
  if (p.out_top_ids.data) {
    V4RT_REQUIRE(p.out_top_ids.dtype == DType::kI32 && p.out_top_ids.ndim == 2 && p.out_top_ids.shape[0] == rows &&
                     p.out_top_ids.stride[1] == 1,
                 "sample out_top_ids: expected I32 [" << rows << ", n], got " << p.out_top_ids.shape_str());
    V4RT_REQUIRE(p.out_top_logprobs.data && p.out_top_logprobs.dtype == DType::kF32 &&
                     p.out_top_logprobs.ndim == 2 && p.out_top_logprobs.shape[0] == rows &&
                     p.out_top_logprobs.shape[1] == p.out_top_ids.shape[1] &&
                     p.out_top_logprobs.stride[0] == p.out_top_ids.stride[0] && p.out_top_logprobs.stride[1] == 1,
                 "sample out_top_logprobs: expected F32 " << p.out_top_ids.shape_str() << " with the stride of out_top_ids");
    V4RT_REQUIRE(p.out_top_ids.shape[1] <= kMaxTopLogprobs,
                 "sample: " << p.out_top_ids.shape[1] << " top-logprob columns (at most " << kMaxTopLogprobs << ")");
    max_n = int(p.out_top_ids.shape[1]);
    top_ids = static_cast<int32_t*>(p.out_top_ids.data);
    top_lp = static_cast<float*>(p.out_top_logprobs.data);
    top_stride = p.out_top_ids.stride[0];
  }
  if (rows == 0) return;
  const SampleOut out{static_cast<int32_t*>(p.out_ids.data), logprob, top_ids, top_lp, top_stride, max_n};
  const bool bf16 = p.logits.dtype == DType::kBF16;
  const int64_t stride = p.logits.stride[0];
  if (launch_sample_split(p.logits.data, bf16, stride, rows, vocab, p.rows, max_n, out, s)) return;
  launch(sample_kernel, unsigned(rows), kThreads, 0, s)(p.logits.data, bf16, stride, vocab, p.rows, out);
  launch_check("sample", s);
}

}  // namespace v4rt::kernels::cuda
