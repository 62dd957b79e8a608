// SPDX-License-Identifier: MIT
// Expected to FAIL (run through expect_failure.sh): world rank 1 never joins an all_reduce, so the
// other ranks must hit the collective deadline (2 s), name rank 1 as absent and abort the job.
#include <mpi.h>
#include <unistd.h>

#include <cstdio>

#include "cluster/mpi_comm.h"
#include "cluster/world.h"

int main(int argc, char** argv) {
  const auto& world = v4rt::cluster::init_world(&argc, &argv);
  v4rt::cluster::CommOptions options;
  options.name = "world";
  options.timeout_s = 2.0;
  v4rt::cluster::MpiComm comm(MPI_COMM_WORLD, options);
  float x = 1.f;
  comm.all_reduce(&x, &x, 1, v4rt::DType::kF32);  // everyone: completes
  if (world.rank == 1) {
    sleep(30);  // busy elsewhere: never joins the second all_reduce
  } else {
    comm.all_reduce(&x, &x, 1, v4rt::DType::kF32);
  }
  std::printf("rank %d: unexpected normal exit\n", world.rank);
  v4rt::cluster::finalize_world();
  return 0;
}
