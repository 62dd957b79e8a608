// SPDX-License-Identifier: MIT
// Expected to FAIL (run through expect_failure.sh): the path of an NCCL asynchronous error. World
// rank 1's device-Comm watchdog reports an error (a fake probe standing in for
// ncclCommGetAsyncError) while the other ranks wait in an MPI collective with a 30 s deadline; the
// watchdog's failure must end the whole job well before that, naming rank 1.
#include <mpi.h>

#include <cstdio>

#include <glog/logging.h>

#include "cluster/mpi_comm.h"
#include "cluster/watchdog.h"
#include "cluster/world.h"

int main(int argc, char** argv) {
  const auto& world = v4rt::cluster::init_world(&argc, &argv);
  v4rt::cluster::CommOptions options;
  options.name = "world";
  options.timeout_s = 30.0;
  v4rt::cluster::MpiComm comm(MPI_COMM_WORLD, options);
  std::unique_ptr<v4rt::cluster::CommWatchdog> dog;
  if (world.rank == 1) {
    v4rt::cluster::CommWatchdog::Probe probe;
    int polls = 0;
    probe.async_error = [&polls]() -> std::string { return ++polls > 5 ? "unhandled system error" : ""; };
    probe.work_done = [] { return false; };
    dog = std::make_unique<v4rt::cluster::CommWatchdog>(
        "NCCL communicator 'ep' (world rank 1)", 20.0, probe,
        [](const std::string& why) { LOG(FATAL) << why; }, 0.01);
    dog->enqueued();
  }
  comm.barrier();  // rank 1 joins too, then its watchdog fires while everyone waits below
  float x = 1.f;
  if (world.rank != 1) comm.all_reduce(&x, &x, 1, v4rt::DType::kF32);
  else for (;;) pause();
  std::printf("rank %d: unexpected normal exit\n", world.rank);
  v4rt::cluster::finalize_world();
  return 0;
}
