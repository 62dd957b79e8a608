// SPDX-License-Identifier: MIT
// cp.async (global -> shared memory, asynchronous) as the kernels of this folder use it: 4-, 8- and
// 16-byte copies (the 16- and 4-byte ones also zero-filling), commit groups and waits. Included
// only by .cu files of this folder.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_math.cuh"

namespace v4rt::kernels::cuda {

// 4 bytes (compact FP4 rows are only 4-byte aligned: 68-byte rows); .ca, the only size-4 form.
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
// 8 bytes to the shared-memory address dst (compact FP8 entry rows are 8-byte aligned).
__device__ __forceinline__ void cp_async8(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(src) : "memory");
}
// cp.async of 16 / 4 bytes to a shared-memory address, copying `bytes` (16 or 4, or 0: zeros,
// nothing read).
__device__ __forceinline__ void cp_async16_n(uint32_t dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async4_n(uint32_t dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// The same to a generic pointer into shared memory; !full writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool full) {
  cp_async16_n(uint32_t(__cvta_generic_to_shared(dst)), src, full ? 16 : 0);
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool full) {
  cp_async4_n(uint32_t(__cvta_generic_to_shared(dst)), src, full ? 4 : 0);
}
// cp_async16 that also asks the L2, on a miss, to fetch the whole aligned block of `prefetch` bytes
// (128 or 256; anything else: no hint) around src: for streams read 64 bytes at a time whose next
// pieces follow shortly (a prefetch never faults; a page holds whole blocks).
__device__ __forceinline__ void cp_async16_prefetch(void* dst, const void* src, bool full, int prefetch) {
  const uint32_t d = uint32_t(__cvta_generic_to_shared(dst)), n = full ? 16 : 0;
  if (prefetch == 256) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n) : "memory");
  } else if (prefetch == 128) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n) : "memory");
  } else {
    cp_async16_n(d, src, n);
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Waits until at most kPending of this thread's latest commit groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace v4rt::kernels::cuda
