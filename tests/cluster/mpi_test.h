// SPDX-License-Identifier: MIT
// Helpers for gtest suites that run under mpirun (main in mpi_test_main.cpp): the world size and
// rank, a skip when the world is too small, and a short collective deadline so a broken test fails
// in seconds instead of hanging.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

namespace v4rt::testing {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
// Collective deadline used by the test suites.
constexpr double kTestTimeoutS = 20.0;

}  // namespace v4rt::testing

// Skips the test (on every rank alike) unless the world has at least n ranks.
#define V4RT_REQUIRE_WORLD(n)                                                         \
  do {                                                                                \
    if (::v4rt::testing::world_size() < (n))                                          \
      GTEST_SKIP() << "needs " << (n) << " ranks, world has "                         \
                   << ::v4rt::testing::world_size();                                  \
  } while (0)
