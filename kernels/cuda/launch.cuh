// SPDX-License-Identifier: MIT
// launch(kernel, grid, block, smem, stream)(args...): the kernel launch of this folder. It is
// kernel<<<grid, block, smem, stream>>>(args...), except while a LaunchLog is active for `stream`
// (a step graph replaying its executable, launch_log.h): then the launch is written down, its
// parameters packed by value as the kernel takes them, and nothing is enqueued. Included only by
// .cu files.
//
// Programmatic dependent launch (programmatic_launch(), CudaBackendOptions::pdl): the launch
// carries cudaLaunchAttributeProgrammaticStreamSerialization, so the GPU may start the kernel's
// blocks before the kernel ahead of it in the stream has finished: its launch and block set-up
// overlap the previous kernel's last wave and drain instead of following them. That is safe
// because every kernel of this folder begins with pdl_enter(): griddepcontrol.wait holds its
// threads until the previous grid has completed and its memory is visible, before any load or
// store (nothing is read early, so no load of a previous kernel's output can be hoisted above the
// wait). Then griddepcontrol.launch_dependents lets the next kernel start its own launch. Without
// the attribute (or after a non-kernel op) both instructions are no-ops.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_log.h"

namespace v4rt::kernels::cuda {

// The first statement of every kernel (above): wait for the previous grid, then let the next launch.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Once per device (the bit of the current device in *done): the kernel's dynamic shared memory
// limit raised to `smem` bytes, and with max_carveout the whole carveout given to shared memory.
template <class Kernel>
void set_smem_once(Kernel* kernel, size_t smem, bool max_carveout, std::atomic<uint64_t>* done) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit != 0 && (done->load() & bit)) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  if (max_carveout)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared)));
  done->fetch_or(bit);
}

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
    } else if (programmatic_launch()) {  // errors are left for cudaGetLastError, as <<< >>> leaves them
      cudaLaunchAttribute attr[1];
      cudaLaunchConfig_t config = programmatic_config(grid_, block_, smem_, stream_, attr);
      (void)cudaLaunchKernelEx(&config, kernel_, std::forward<A>(a)...);
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
