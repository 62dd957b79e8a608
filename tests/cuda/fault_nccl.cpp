// SPDX-License-Identifier: MIT
// Expected to FAIL (run through tests/cuda/gpu_fault.sh, which skips without a GPU per rank): world
// rank 1 never joins an NCCL all-reduce. Rank 0 enqueues it and then waits on the host without
// ever calling synchronize(): its NcclComm watchdog must find the work still pending after the 3 s
// deadline, abort the communicator and end the whole job, naming world rank 0.
#include <unistd.h>

#include <cstdio>

#include "cluster/nccl_comm.h"
#include "cluster/world.h"

int main(int argc, char** argv) {
  const auto& world = v4rt::cluster::init_world(&argc, &argv);
  v4rt::cluster::bind_local_device(world.local_rank);
  v4rt::cluster::CommOptions options;
  options.name = "ep";
  options.timeout_s = 3.0;
  v4rt::cluster::NcclComm comm(MPI_COMM_WORLD, options);
  float* x = nullptr;
  cudaMalloc(&x, 4 * sizeof(float));
  comm.all_reduce(x, x, 4, v4rt::DType::kF32);  // everyone: completes
  comm.synchronize();
  if (world.rank != 1) comm.all_reduce(x, x, 4, v4rt::DType::kF32);  // rank 1 never joins
  sleep(30);
  std::printf("rank %d: unexpected normal exit\n", world.rank);
  v4rt::cluster::finalize_world();
  return 0;
}
