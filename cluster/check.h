// SPDX-License-Identifier: MIT
// MPI_CHECK, made from the one generic V4RT_CHECK_GEN of common/status_check.h (CUDA_CHECK,
// CUBLAS_CHECK and NCCL_CHECK are made the same way). A failed call logs the statement,
// file:line, function, MPI's error text and code, and the rank context (host, world rank,
// device), then LOG(FATAL); the failure function installed by cluster::init_world turns that into
// MPI_Abort so no peer hangs in a collective.
#pragma once

#include <string>

#include "common/status_check.h"

namespace v4rt::cluster {

// MPI's text for an error code.
std::string mpi_error_string(int code);

// " (host H, rank R, device D)": the context part of every cluster-side check failure.
std::string check_context();

// Device index shown in check failures; -1 (the default) means "host only".
void set_check_device(int device_index);
int check_device();

}  // namespace v4rt::cluster

#define V4RT_MPI_CHECK(call) \
  V4RT_CHECK_GEN(call, MPI_SUCCESS, ::v4rt::cluster::mpi_error_string, ::v4rt::cluster::check_context)
#ifndef MPI_CHECK
#define MPI_CHECK(call) V4RT_MPI_CHECK(call)
#endif
