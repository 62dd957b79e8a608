// SPDX-License-Identifier: MIT
// make_backend: "cpu" always; "cuda" when the binary was built with V4RT_ENABLE_CUDA (the
// definition V4RT_HAVE_CUDA), through kernels/cuda's make_cuda_backend.
#include "kernels/backend_factory.h"

#include "common/check.h"

#if defined(V4RT_HAVE_CUDA)
#include "kernels/cuda/factory.h"
namespace v4rt::kernels::cuda {
int device_count();  // kernels/cuda/device.h (which needs the CUDA headers)
}  // namespace v4rt::kernels::cuda
#endif

namespace v4rt::kernels {

bool have_cuda_backend() {
#if defined(V4RT_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#if defined(V4RT_HAVE_CUDA)
  return cuda::device_count();
#else
  return 0;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, int device_index) {
  if (name == "cpu") return make_cpu_backend();
  if (name == "cuda") {
#if defined(V4RT_HAVE_CUDA)
    return cuda::make_cuda_backend(device_index);
#else
    (void)device_index;
    V4RT_FAIL("backend 'cuda': this binary has no CUDA backend (build with -DV4RT_ENABLE_CUDA=ON)");
#endif
  }
  V4RT_FAIL("backend '" << name << "' is not one of: cpu, cuda");
}

}  // namespace v4rt::kernels
