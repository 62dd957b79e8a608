// SPDX-License-Identifier: MIT
// Launch geometry of the CUDA launchers (kernels/cuda/launch_geometry.h), without a device: the
// y/z block counts never pass 65,535 and their grid-stride loops visit every token exactly once
// (the count that failed was 65,536 tokens), x block counts past 2^31 - 1 are a named error, and
// the grouped-tile bound covers every split of the rows over the groups.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/launch_geometry.h"

namespace v4rt::kernels::cuda {
namespace {

TEST(LaunchGeometry, GridYzStaysUnderTheLimitAndStridesCoverEveryItem) {
  for (int64_t count : {int64_t(0), int64_t(1), int64_t(65534), int64_t(65535), int64_t(65536), int64_t(65537),
                        int64_t(131071), int64_t(1) << 20, int64_t(1000003)}) {
    const unsigned blocks = grid_yz(count);
    EXPECT_GE(blocks, 1u);
    EXPECT_LE(int64_t(blocks), kMaxGridYZ) << count;
    if (count <= kMaxGridYZ && count > 0) {
      EXPECT_EQ(int64_t(blocks), count);
    }
    // The kernels' loop: for (t = blockIdx.y; t < count; t += gridDim.y).
    std::vector<uint8_t> seen(static_cast<size_t>(count), 0);
    for (unsigned b = 0; b < blocks; ++b)
      for (int64_t t = b; t < count; t += blocks) ++seen[size_t(t)];
    for (int64_t t = 0; t < count; ++t) ASSERT_EQ(seen[size_t(t)], 1) << "count " << count << " item " << t;
  }
}

TEST(LaunchGeometry, GridXFailsByNameOverTheLimit) {
  EXPECT_EQ(grid_x(0, "k"), 1u);
  EXPECT_EQ(grid_x(kMaxGridX, "k"), unsigned(kMaxGridX));
  // A million tokens of the widest elementwise op (hc_post: 4 x 7168 per token) stays far below.
  EXPECT_EQ(grid_x_for(int64_t(1) << 20 << 2 << 13, 256, "hc_post"), unsigned((int64_t(1) << 35) / 256));
  EXPECT_EQ(grid_x_for(257, 256, "k"), 2u);
  try {
    grid_x(kMaxGridX + 1, "hc mix_partial");
    FAIL() << "no error past the x limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hc mix_partial"), std::string::npos) << e.what();
  }
  EXPECT_THROW(grid_x(-1, "k"), Error);
  EXPECT_THROW(grid_x_for(int64_t(1) << 40, 256, "k"), Error);
}

TEST(LaunchGeometry, GroupedTileBoundCoversEverySplit) {
  std::mt19937_64 gen(11);
  EXPECT_EQ(grouped_tile_bound(0, 8, 64), 0);
  EXPECT_EQ(grouped_tile_bound(5, 0, 64), 0);
  EXPECT_EQ(grouped_tile_bound(1, 256, 64), 2);  // one row: one tile (+1 slack), not 256
  for (int trial = 0; trial < 2000; ++trial) {
    const int groups = int(std::uniform_int_distribution<int>(1, 300)(gen));
    const int64_t max_rows = std::uniform_int_distribution<int64_t>(0, 5000)(gen);
    // Rows spread over a random subset of the groups (total <= max_rows), tiles counted per group.
    std::vector<int64_t> rows(size_t(groups), 0);
    int64_t left = std::uniform_int_distribution<int64_t>(0, max_rows)(gen);
    while (left > 0) {
      const int64_t take = std::min<int64_t>(left, std::uniform_int_distribution<int64_t>(1, 200)(gen));
      rows[size_t(std::uniform_int_distribution<int>(0, groups - 1)(gen))] += take;
      left -= take;
    }
    int64_t tiles = 0;
    for (int64_t r : rows) tiles += (r + 63) / 64;
    EXPECT_LE(tiles, grouped_tile_bound(max_rows, groups, 64)) << "trial " << trial;
  }
  // Every group one row past a whole tile: 8 tiles under a bound of 9.
  EXPECT_EQ(grouped_tile_bound(4 * 65, 4, 64), 5 + 4);
}

}  // namespace
}  // namespace v4rt::kernels::cuda
