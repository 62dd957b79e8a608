// SPDX-License-Identifier: MIT
// Expected to FAIL (run through expect_failure.sh): world rank 1 kills itself with SIGKILL in the
// middle of a loop of collectives; every other rank must end within seconds, with mpirun naming
// the dead rank, never hang.
#include <mpi.h>
#include <signal.h>

#include <cstdio>

#include "cluster/mpi_comm.h"
#include "cluster/world.h"

int main(int argc, char** argv) {
  const auto& world = v4rt::cluster::init_world(&argc, &argv);
  v4rt::cluster::CommOptions options;
  options.name = "world";
  options.timeout_s = 5.0;
  v4rt::cluster::MpiComm comm(MPI_COMM_WORLD, options);
  for (int step = 0; step < 100000; ++step) {
    if (world.rank == 1 && step == 50) raise(SIGKILL);
    float x = float(step);
    comm.all_reduce(&x, &x, 1, v4rt::DType::kF32);
  }
  std::printf("rank %d: unexpected normal exit\n", world.rank);
  v4rt::cluster::finalize_world();
  return 0;
}
