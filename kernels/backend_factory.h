// SPDX-License-Identifier: MIT
// Backend selection by name, for the commands and tests that let the user pick where the model
// runs: "cpu" (the fp32 reference) or "cuda" (only in binaries built with V4RT_ENABLE_CUDA).
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace v4rt::kernels {

// True when this binary contains the CUDA backend.
bool have_cuda_backend();

// `name`: "cpu" | "cuda". `device_index` selects the GPU for "cuda" (-1: the current device) and is
// ignored for "cpu". Throws v4rt::Error for an unknown name, for "cuda" in a binary built without
// CUDA, and when the device is absent.
std::unique_ptr<Backend> make_backend(const std::string& name, int device_index = 0);

// CUDA devices visible to this process (0 without CUDA or without a device).
int cuda_device_count();

}  // namespace v4rt::kernels
