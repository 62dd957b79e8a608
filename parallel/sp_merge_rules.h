// SPDX-License-Identifier: MIT
// The rules of the SP top-k merge and attention merge (sp_ops.h), one definition for the host
// loops (sp_ops.cpp) and the CUDA kernels (cuda/cuda_sp_ops.cu).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define V4RT_SP_FN __host__ __device__ inline
#else
#define V4RT_SP_FN inline
#endif

namespace v4rt::parallel::sp_rules {

// Global entry index of local entry `local` of SP rank `idx` (SpPartition::to_global).
V4RT_SP_FN int64_t to_global(int64_t local, int sp_size, int idx, int64_t block) {
  return ((local / block) * sp_size + idx) * block + local % block;
}

// A slot of a gathered local top-k list: valid when it names an entry and its score is not -inf
// (or NaN): value >= -FLT_MAX.
V4RT_SP_FN bool valid(float value, int32_t local) { return local >= 0 && value >= -3.402823466e+38f; }

// (value a, global index ga) comes before (value b, global index gb): descending value, ties by
// lower global index.
V4RT_SP_FN bool before(float a, int64_t ga, float b, int64_t gb) { return a > b || (a == b && ga < gb); }

// Slots of list q ([k], sorted by `before`, invalid slots last) that come before (v, g): a binary
// search for the first slot that does not.
V4RT_SP_FN int count_before(const float* values, const int32_t* local, int k, int q, int sp_size, int64_t block,
                            float v, int64_t g) {
  int lo = 0, hi = k;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const bool earlier = valid(values[mid], local[mid]) &&
                         before(values[mid], to_global(local[mid], sp_size, q, block), v, g);
    if (earlier) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace v4rt::parallel::sp_rules
