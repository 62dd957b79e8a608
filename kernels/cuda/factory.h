// SPDX-License-Identifier: MIT
// The CUDA backend's constructor function, declared without any CUDA header so host-only code
// (kernels/backend_factory.cpp) can call it.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace v4rt::kernels::cuda {

struct CudaBackendOptions {
  // Projections that ask for no activation quantization (LinearParams::act_quant_fp8 false, the
  // reference numerics) with F32 activations run as fp32 GEMMs on F32 copies of their BF16/FP8
  // weights instead of bf16 GEMMs (x rounded to bf16). For validation against fp32 references;
  // costs twice the weight memory of those projections.
  bool fp32_dense = false;
};

// The CUDA backend on `device` (-1: current). Throws v4rt::Error when no device is present.
std::unique_ptr<Backend> make_cuda_backend(int device = -1, const CudaBackendOptions& options = {});

}  // namespace v4rt::kernels::cuda
