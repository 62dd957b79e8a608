// SPDX-License-Identifier: MIT
// CUDA_CHECK / CUBLAS_CHECK, both made from the one generic V4RT_CHECK_GEN (common/status_check.h).
// A failure names the statement, file:line, function, error string and the current device.
// launch_check(op, stream) ends every kernel launcher: it catches launch errors and, when the debug
// switch set_sync_after_ops(true) is on, synchronizes so an asynchronous fault is pinned on the op
// that caused it.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "common/status_check.h"

namespace v4rt::kernels::cuda {

// " [device N of M, host H]" for failure messages.
std::string device_context();

void set_sync_after_ops(bool on);
bool sync_after_ops();
// Checks cudaGetLastError() after a launch; synchronizes `stream` under the debug switch.
void launch_check(const char* op, cudaStream_t stream);

}  // namespace v4rt::kernels::cuda

#define CUDA_CHECK(expr) \
  V4RT_CHECK_GEN(expr, cudaSuccess, cudaGetErrorString, ::v4rt::kernels::cuda::device_context)
#define CUBLAS_CHECK(expr)                                                  \
  V4RT_CHECK_GEN(expr, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString, \
                 ::v4rt::kernels::cuda::device_context)
