// SPDX-License-Identifier: MIT
// Tensor parallelism's one collective: the sum of the partial results of a row-parallel step (the
// output projection wo_b, whose input columns are split over the TP group, and the lightning
// indexer's scores, whose heads are split). Every TP rank ends with the full sum.
// Bytes sent per rank (cluster::Comm's logical count): 2 * (tp-1) * count * 4 / tp.
// The data stays where it is: on CUDA ranks the TP Comm (NcclComm, or StagedComm when ranks share
// a GPU) works on the device buffer, ordered on the backend's stream, so no host copy and no wait.
#pragma once

#include <cstdint>

#include "cluster/comm.h"
#include "common/tensor.h"

namespace v4rt::parallel {

// data: [count] F32 on the communicator's device; summed over the TP group in place.
void tp_reduce_sum(cluster::Comm& tp, float* data, int64_t count);
// The same for a contiguous F32 view; CHECK-fails (naming the group) when the view is not on the
// Comm's memory.
void tp_reduce_sum(cluster::Comm& tp, const TensorView& v);

}  // namespace v4rt::parallel
