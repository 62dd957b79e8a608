// SPDX-License-Identifier: MIT
// What the batched launches share (copy_rows_batch, compressor_pool_batch, RoPE runs, the batched
// indexer scores and sparse attention): the kernel-parameter budget that carries their per-part
// descriptors by value (no upload to the device, capturable in a CUDA graph), and the search for
// the part that holds an item of the launch. Included only by .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v4rt::kernels::cuda {

// Bytes of kernel parameters one launch may pass (CUDA 12.1+ on sm_70+).
constexpr int kMaxKernelParamBytes = 32764;

// The last k in [0, n) with first(k) <= i, for first(k) ascending in k and n >= 1: the part of a
// launch holding item i when part k's items start at first(k). A part with no items shares its
// start with a later part, which wins.
template <class First>
__device__ __forceinline__ int part_holding(int n, int64_t i, First first) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (first(mid) <= i) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

}  // namespace v4rt::kernels::cuda
