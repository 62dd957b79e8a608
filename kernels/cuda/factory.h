// SPDX-License-Identifier: MIT
// The CUDA backend's constructor function, declared without any CUDA header so host-only code
// (kernels/backend_factory.cpp) can call it.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace v4rt::kernels::cuda {

// The CUDA backend on `device` (-1: current). Throws v4rt::Error when no device is present.
std::unique_ptr<Backend> make_cuda_backend(int device = -1);

}  // namespace v4rt::kernels::cuda
