// SPDX-License-Identifier: MIT
// One generic status-check macro from which every library-specific check is made: CUDA_CHECK and
// CUBLAS_CHECK (kernels/cuda/cuda_check.h), NCCL_CHECK (cluster/nccl_comm.cpp). On failure it logs
// the statement, file:line, function, the library's error string and code, and a context string
// from the caller (device, rank, last NCCL error), then LOG(FATAL); cluster/ installs a failure
// function that turns that into MPI_Abort so peers do not wait forever in a collective.
#pragma once

#include <glog/logging.h>

// expr: the call; ok: its success value; err_string: status -> const char*; context: () -> string.
#define V4RT_CHECK_GEN(expr, ok, err_string, context)                                        \
  do {                                                                                        \
    const auto v4rt_status_ = (expr);                                                         \
    if (v4rt_status_ != (ok)) {                                                               \
      LOG(FATAL) << #expr << " failed at " << __FILE__ << ":" << __LINE__ << " in "           \
                 << __func__ << ": " << err_string(v4rt_status_) << " (" << int(v4rt_status_) \
                 << ")" << context();                                                         \
    }                                                                                         \
  } while (0)
