// SPDX-License-Identifier: MIT
// The MPI world of a v4rt job: start-up (MPI_Init_thread, error handlers that return codes),
// topology (rank, local rank, node index grouped by shared-memory domain), rank-aware logging
// (per-rank glog files, console from rank 0) and the fault path: a glog failure function that
// prints the rank and host and calls MPI_Abort, so one failing rank ends the whole job instead of
// leaving its peers waiting in a collective.
#pragma once

#include <memory>
#include <string>

namespace v4rt::cluster {

struct WorldInfo {
  int rank = 0;         // world rank
  int size = 1;         // world size
  int local_rank = 0;   // rank among the processes of this node
  int local_size = 1;   // processes on this node
  int node_idx = 0;     // nodes numbered by their lowest world rank
  int num_nodes = 1;
  std::string host;     // this process's host name
};

struct WorldOptions {
  std::string log_dir;        // per-rank log files <log_dir>/<prog>.*.rankNN; empty: stderr only
  bool console_all = false;   // INFO on the console from every rank, not only rank 0
  bool install_signal_handler = true;  // glog's stack-trace handler for SIGSEGV/SIGABRT...
};

// Initialises MPI (if not yet initialised), logging and the abort path. Call once, first thing in
// main. Returns the world; later calls return the same object.
const WorldInfo& init_world(int* argc, char*** argv, const WorldOptions& options = {});
// The world set up by init_world (CHECK-fails before it).
const WorldInfo& world();
bool world_initialised();
// True in a process started by mpirun / mpiexec (Open MPI, MPICH/PMI, PMIx set their variables in
// every process they start): the commands then join the MPI world.
bool launched_by_mpirun();
// MPI is initialised and not yet finalised in this process.
bool mpi_running();
// MPI_Finalize if this module initialised MPI. Idempotent.
void finalize_world();
// Prints "v4rt: rank R on HOST: <why>; aborting the job" and calls MPI_Abort(code).
[[noreturn]] void abort_world(const std::string& why, int code = 1);

// Installs the failure function and MPI error handler only (for programs that call MPI_Init
// themselves, e.g. the test main). Needs MPI to be initialised.
void install_fault_handlers();

}  // namespace v4rt::cluster
