// SPDX-License-Identifier: MIT
// Tensor parallelism's one collective: the sum of the partial results of a row-parallel step (the
// output projection wo_b, whose input columns are split over the TP group, and the lightning
// indexer's scores, whose heads are split). Every TP rank ends with the full sum.
// Bytes sent per rank (cluster::Comm's logical count): 2 * (tp-1) * count * 4 / tp.
#pragma once

#include <cstdint>

#include "cluster/comm.h"

namespace v4rt::parallel {

// data: [count] F32 on the communicator's device; summed over the TP group in place.
void tp_reduce_sum(cluster::Comm& tp, float* data, int64_t count);

}  // namespace v4rt::parallel
