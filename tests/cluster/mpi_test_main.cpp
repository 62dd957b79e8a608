// SPDX-License-Identifier: MIT
// gtest main for tests under mpirun: initialises the world (MPI, logging, abort-on-fatal), keeps
// gtest's console output on rank 0 only, and turns any failure on any rank into a non-zero exit on
// every rank (a failure reported only by a silent rank would otherwise be invisible).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>

#include "cluster/world.h"

namespace {

// Prints failed assertions of a non-zero rank, tagged with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const auto& world = v4rt::cluster::init_world(&argc, &argv);
  if (world.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(world.rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (world.rank == 0 && any_failed && !failed) {
    std::fprintf(stderr, "a test failed on another rank (see [rank N] lines above)\n");
  }
  v4rt::cluster::finalize_world();
  return any_failed;
}
