// SPDX-License-Identifier: MIT
// launch(kernel, grid, block, smem, stream)(args...): the kernel launch of this folder. It is
// kernel<<<grid, block, smem, stream>>>(args...), except while a LaunchLog is active for `stream`
// (a step graph replaying its executable, launch_log.h): then the launch is written down, its
// parameters packed by value as the kernel takes them, and nothing is enqueued. Included only by
// .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

#include "kernels/cuda/launch_log.h"

namespace v4rt::kernels::cuda {

template <class... P>
class KernelLaunch {
 public:
  KernelLaunch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream)
      : kernel_(kernel), grid_(grid), block_(block), smem_(smem), stream_(stream) {}

  template <class... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "launch: argument count differs from the kernel's");
    if (LaunchLog* log = LaunchLog::active_for(stream_)) {
      record(*log, std::forward<A>(a)...);
    } else {
      kernel_<<<grid_, block_, smem_, stream_>>>(std::forward<A>(a)...);
    }
  }

 private:
  template <class... A>
  void record(LaunchLog& log, A&&... a) const {
    static_assert((std::is_trivially_copyable_v<P> && ...), "launch: kernel parameters are copied by value");
    size_t offsets[sizeof...(P) + 1] = {};
    size_t total = 0, i = 0;
    ((total = (total + alignof(P) - 1) / alignof(P) * alignof(P), offsets[i++] = total, total += sizeof(P)), ...);
    unsigned char* p = log.add_kernel(reinterpret_cast<const void*>(kernel_), grid_, block_, smem_, total);
    i = 0;
    ((new (p + offsets[i]) P(std::forward<A>(a)), log.add_arg(uint32_t(offsets[i])), ++i), ...);
    (void)p;
  }

  void (*kernel_)(P...);
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
};

template <class... P>
KernelLaunch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
  return KernelLaunch<P...>(kernel, grid, block, smem, stream);
}

}  // namespace v4rt::kernels::cuda
