// SPDX-License-Identifier: MIT
// Device memory for work recorded into a step graph (kernels/cuda/step_graph.h).
//
// While a stream is being captured, a cudaMallocAsync on it becomes a graph memory node whose
// address is fixed by that capture alone, so two captures of the same step would differ in every
// pointer their kernels take and each would need a graph of its own. Allocations made while
// recording come from here instead: blocks taken once with cudaMalloc and recycled, so a step
// recorded again receives the same addresses and its graph updates the cached executable in place.
// Reuse follows the stream-ordered pool's rule: a block freed on the host is handed out again only
// to work enqueued later on the same stream, which runs after every op that used it.
#pragma once

#include <cstddef>

namespace v4rt::kernels::cuda::capture_memory {

void* alloc(size_t bytes);
// Returns `p` to the cache; false when `p` is not one of its blocks.
bool release(void* p);

}  // namespace v4rt::kernels::cuda::capture_memory
