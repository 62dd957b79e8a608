// SPDX-License-Identifier: MIT
// Launch geometry shared by the CUDA launchers, free of CUDA headers so it is tested on any build.
// CUDA limits gridDim.x to 2^31 - 1 blocks and gridDim.y / gridDim.z to 65,535. A dimension that
// grows with the number of tokens (prompts of a million tokens and more) therefore goes on x, or on
// y / z walked by a grid-stride loop:
//   for (int64_t t = blockIdx.y; t < n; t += gridDim.y) { ... }   with gridDim.y = grid_yz(n).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/check.h"

namespace v4rt::kernels::cuda {

inline constexpr int64_t kMaxGridX = 2147483647;
inline constexpr int64_t kMaxGridYZ = 65535;

// Blocks along y or z for `count` items walked by a grid-stride loop: min(count, 65,535), at
// least 1 (a launch needs one block; a loop over zero items does nothing).
inline unsigned grid_yz(int64_t count) { return unsigned(std::clamp<int64_t>(count, 1, kMaxGridYZ)); }

// Blocks along x; a clear error naming the kernel `what` past the limit (never a silent wrap).
inline unsigned grid_x(int64_t blocks, const char* what) {
  V4RT_REQUIRE(blocks >= 0 && blocks <= kMaxGridX,
               "kernel " << what << ": " << blocks << " blocks exceed the CUDA grid limit of " << kMaxGridX);
  return unsigned(std::max<int64_t>(blocks, 1));
}

// Blocks of `threads` threads covering `items` work items on x (1-D grids).
inline unsigned grid_x_for(int64_t items, int threads, const char* what) {
  return grid_x((items + threads - 1) / threads, what);
}

// Upper bound of the tiles of `rows_per_tile` rows over groups that hold max_rows rows in all:
// sum over groups of ceil(rows_g / rows_per_tile) <= ceil(max_rows / rows_per_tile) + the number of
// groups with rows (each adds at most one partial tile), and at most min(num_groups, max_rows) groups
// have rows. Grouped kernels launch this many blocks along x and retire the surplus.
inline int64_t grouped_tile_bound(int64_t max_rows, int64_t num_groups, int64_t rows_per_tile) {
  if (max_rows <= 0 || num_groups <= 0) return 0;
  return (max_rows + rows_per_tile - 1) / rows_per_tile + std::min(num_groups, max_rows);
}

}  // namespace v4rt::kernels::cuda
