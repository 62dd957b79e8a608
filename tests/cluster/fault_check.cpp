// SPDX-License-Identifier: MIT
// Expected to FAIL (run through expect_failure.sh): world rank 1 makes an invalid MPI call under
// MPI_CHECK; the check must name the call and the rank, and MPI_Abort must end the peers that
// wait in a barrier long before their collective deadline.
#include <mpi.h>

#include <cstdio>

#include "cluster/check.h"
#include "cluster/mpi_comm.h"
#include "cluster/world.h"

int main(int argc, char** argv) {
  const auto& world = v4rt::cluster::init_world(&argc, &argv);
  v4rt::cluster::CommOptions options;
  options.timeout_s = 30.0;
  v4rt::cluster::MpiComm comm(MPI_COMM_WORLD, options);
  if (world.rank == 1) {
    int x = 0;
    MPI_CHECK(MPI_Send(&x, -1, MPI_INT, 0, 0, MPI_COMM_WORLD));  // negative count: MPI_ERR_COUNT
  }
  comm.barrier();
  std::printf("rank %d: unexpected normal exit\n", world.rank);
  v4rt::cluster::finalize_world();
  return 0;
}
