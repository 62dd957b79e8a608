// SPDX-License-Identifier: MIT
// What the lightning-indexer kernels share (indexer.cu: the CUDA-core and bf16 tensor-core kernels;
// indexer_fp8.cu, indexer_fp8_decode.cu: the FP8 wgmma kernels): the launch descriptor passed by
// value in the kernel parameters (the 4-byte cp.async that fetches compact FP4 key rows is in
// cp_async.cuh). Included only by .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/kv_decode.cuh"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

// One part of a launch (a sequence of a batch, or the whole call): its views and positions. The
// parts are passed by value in the kernel parameters (no copy to the device, capturable in a CUDA
// graph); the launch's query tokens are numbered across the parts, part i holding [row0, row0 + rows).
struct IdxPart {
  Act q, keys, w;
  KvRowsDev ckeys;  // compact keys (ckeys.data set): read instead of keys
  void* scores;     // F32, or bf16 with IdxArgs::scores_bf16 (store_score)
  int64_t score_stride, key_begin, key_end, pos_begin, row0;
  bool vec;  // plain keys read 16 bytes at a time
};

// The parts that fit in the kernel parameters beside the shared fields (< 64 bytes): 185 parts
// of 176 bytes (204 before a compact table could be paged: KvRowsDev's block table and shift).
constexpr int kMaxIdxParts = int((kMaxKernelParamBytes - 64) / sizeof(IdxPart));

struct IdxArgs {
  int64_t n;  // query tokens of the launch
  int h_begin, nh, dim, ratio;
  float weight_scale;
  bool accumulate, bf16_arith;
  bool scores_bf16;  // every part's scores are bf16 (the official numerics' scores are bf16 values)
  int num_parts;
  int64_t key_span;  // tensor-core kernel: keys per block of y
  IdxPart parts[kMaxIdxParts];
};
static_assert(sizeof(IdxArgs) <= kMaxKernelParamBytes, "indexer kernel parameters");
static_assert(offsetof(IdxArgs, parts) <= 64, "indexer shared fields: kMaxIdxParts assumes < 64 bytes");

// Writes score v at element i of part p's scores: F32, or bf16 codes with a.scores_bf16 (exact:
// the official numerics round every score to bf16). With a.accumulate (F32 only) v is added to
// what is there. mask_score writes -inf (a key the query does not see), accumulate or not.
__device__ __forceinline__ void store_score(const IdxArgs& a, const IdxPart& p, int64_t i, float v) {
  if (a.scores_bf16) {
    static_cast<uint16_t*>(p.scores)[i] = f32_to_bf16(v);
  } else {
    float* out = static_cast<float*>(p.scores) + i;
    *out = a.accumulate ? *out + v : v;
  }
}
__device__ __forceinline__ void mask_score(const IdxArgs& a, const IdxPart& p, int64_t i) {
  if (a.scores_bf16) static_cast<uint16_t*>(p.scores)[i] = 0xff80u;  // bf16 -inf
  else static_cast<float*>(p.scores)[i] = -INFINITY;
}

// The part holding launch token tg (binary search over the parts' first tokens).
__device__ __forceinline__ const IdxPart& idx_part_of(const IdxArgs& a, int64_t tg) {
  return a.parts[part_holding(a.num_parts, tg, [&](int k) { return a.parts[k].row0; })];
}




// The keys of block (x, y) of a tensor-core kernel, whose kQueries query tokens from t0 (part
// p's tokens; kThreads / kQueries threads per query) see keys [lo, hi) of the span of block y:
// [lo, cend) are computed, [cend, hi) are past the visible keys of every query of the block and
// get -inf here. False when the block has no key to compute (its span past the part's keys, or
// none of them visible). The queries past a.n are absent (a prefill part holds the launch's n
// tokens; a decode block's one token t0 of its part is below n).
struct KeySpan {
  int64_t lo, hi, cend;
};
template <int kQueries, int kThreads = 256>
__device__ __forceinline__ bool block_key_span(const IdxArgs& a, const IdxPart& p, int64_t t0, KeySpan* k) {
  constexpr int kPer = kThreads / kQueries;  // threads per query filling the -inf tail
  static_assert(kPer * kQueries == kThreads && kPer % 32 == 0, "whole warps per query");
  k->lo = p.key_begin + int64_t(blockIdx.y) * a.key_span;
  if (k->lo >= p.key_end) return false;
  k->hi = min(p.key_end, k->lo + a.key_span);
  const int64_t vis_end = (p.pos_begin + min(a.n, t0 + kQueries)) / a.ratio;  // keys the block's last query sees
  k->cend = min(k->hi, max(k->lo, vis_end));
  const int64_t t = t0 + threadIdx.x / kPer;
  if (t < a.n)
    for (int64_t j = k->cend + threadIdx.x % kPer; j < k->hi; j += kPer)
      mask_score(a, p, t * p.score_stride + (j - p.key_begin));
  return k->cend > k->lo;
}

// The grid of a tensor-core kernel over a.n query tokens in blocks of `queries`, and the keys per
// block of y (a.key_span, whole tiles of `tile_keys`): the keys split over y only when the query
// blocks are too few for about four waves of two blocks per SM (short chunks against long
// contexts, decode batches). `what` names the kernel in grid-limit errors (indexer.cu).
dim3 indexer_tc_grid(IdxArgs& a, int64_t max_keys, int queries, int tile_keys, const char* what);

// FP8 wgmma kernel (indexer_fp8.cu) for a single prefill part with compact FP4 keys under the
// official numerics: whether it serves `a` (head dim 64 or 128, at most 64 heads, 16+ queries),
// and its launch over the part's first `max_keys` keys (it sets a.key_span); with `predecode` the
// keys any query sees are first decoded to e4m3 tiles in scratch, once for every block; with
// `head_sum_mma` the head terms are summed on the tensor cores (indexer_fp8_common.cuh).
bool indexer_fp8_serves(const IdxArgs& a);
void launch_indexer_fp8(IdxArgs& a, int64_t max_keys, cudaStream_t s, bool predecode, bool head_sum_mma);

// FP8 wgmma kernel (indexer_fp8_decode.cu) for a decode batch: any number of parts of few query
// rows each, every part with compact FP4 keys as indexer_fp8_serves takes them (official numerics,
// head dim 64 or 128, at most 64 heads). Whether it serves `a`, and its launch over the parts'
// first `max_keys` keys at most (it sets a.key_span).
bool indexer_fp8_decode_serves(const IdxArgs& a);
void launch_indexer_fp8_decode(IdxArgs& a, int64_t max_keys, cudaStream_t s, bool head_sum_mma);

}  // namespace v4rt::kernels::cuda
