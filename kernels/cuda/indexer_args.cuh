// SPDX-License-Identifier: MIT
// What the lightning-indexer kernels share (indexer.cu: the CUDA-core and bf16 tensor-core kernels;
// indexer_fp8.cu: the FP8 wgmma kernel): the launch descriptor passed by value in the kernel
// parameters, and the 4-byte cp.async that fetches compact FP4 key rows. Included only by .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/batch_params.cuh"
#include "kernels/cuda/kv_decode.cuh"
#include "kernels/cuda/ops.h"

namespace v4rt::kernels::cuda {

// One part of a launch (a sequence of a batch, or the whole call): its views and positions. The
// parts are passed by value in the kernel parameters (no copy to the device, capturable in a CUDA
// graph); the launch's query tokens are numbered across the parts, part i holding [row0, row0 + rows).
struct IdxPart {
  Act q, keys, w;
  KvRowsDev ckeys;  // compact keys (ckeys.data set): read instead of keys
  float* scores;
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
  int num_parts;
  int64_t key_span;  // tensor-core kernel: keys per block of y
  IdxPart parts[kMaxIdxParts];
};
static_assert(sizeof(IdxArgs) <= kMaxKernelParamBytes, "indexer kernel parameters");
static_assert(offsetof(IdxArgs, parts) <= 64, "indexer shared fields: kMaxIdxParts assumes < 64 bytes");

// The part holding launch token tg (binary search over the parts' first tokens).
__device__ __forceinline__ const IdxPart& idx_part_of(const IdxArgs& a, int64_t tg) {
  return a.parts[part_holding(a.num_parts, tg, [&](int k) { return a.parts[k].row0; })];
}


// 4 bytes (compact FP4 rows are only 4-byte aligned: 68-byte rows); .ca, the only size-4 form.
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }


// FP8 wgmma kernel (indexer_fp8.cu) for a single prefill part with compact FP4 keys under the
// official numerics: whether it serves `a` (head dim 64 or 128, at most 64 heads, 16+ queries),
// and its launch over the part's first `max_keys` keys.
bool indexer_fp8_serves(const IdxArgs& a);
void launch_indexer_fp8(const IdxArgs& a, int64_t max_keys, cudaStream_t s);

}  // namespace v4rt::kernels::cuda
