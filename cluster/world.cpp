// SPDX-License-Identifier: MIT
// MPI start-up, node topology, rank-aware logging and the abort path (see world.h).
#include "cluster/world.h"

#include <glog/logging.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cluster/check.h"
#include "common/logging.h"

namespace v4rt::cluster {
namespace {

WorldInfo g_world;
bool g_initialised = false;
bool g_we_initialised_mpi = false;

std::string host_name() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) return "unknown-host";
  return host;
}

bool mpi_usable() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  return initialised && !finalised;
}

// glog calls this after printing a FATAL message (CHECK failure, LOG(FATAL), collective timeout).
[[noreturn]] void on_fatal() {
  int rank = -1;
  if (mpi_usable()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "v4rt: rank %d on host %s failed (fatal error above); aborting the job\n",
               rank, host_name().c_str());
  std::fflush(stderr);
  if (mpi_usable()) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

// Fills local rank/size and node index: nodes are shared-memory domains, numbered by the lowest
// world rank they hold.
void detect_topology(WorldInfo* info) {
  MPI_Comm local = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info->rank, MPI_INFO_NULL,
                                &local));
  MPI_CHECK(MPI_Comm_rank(local, &info->local_rank));
  MPI_CHECK(MPI_Comm_size(local, &info->local_size));
  int leader = info->rank;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, local));
  MPI_CHECK(MPI_Comm_free(&local));
  std::vector<int> leaders(size_t(info->size));
  MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::sort(leaders.begin(), leaders.end());
  leaders.erase(std::unique(leaders.begin(), leaders.end()), leaders.end());
  info->num_nodes = int(leaders.size());
  info->node_idx = int(std::lower_bound(leaders.begin(), leaders.end(), leader) - leaders.begin());
}

}  // namespace

void install_fault_handlers() {
  CHECK(mpi_usable()) << "install_fault_handlers needs an initialised MPI";
  // glog's pointer type carries __attribute__((noreturn)); clang does not convert to it implicitly.
  google::InstallFailureFunction(reinterpret_cast<google::logging_fail_func_t>(&on_fatal));
  // Return codes instead of MPI's own abort, so MPI_CHECK can name the call and the rank.
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
}

const WorldInfo& init_world(int* argc, char*** argv, const WorldOptions& options) {
  if (g_initialised) return g_world;
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
      std::fprintf(stderr, "v4rt: MPI_Init_thread failed on host %s\n", host_name().c_str());
      std::exit(1);
    }
    g_we_initialised_mpi = true;
  }
  WorldInfo info;
  MPI_Comm_rank(MPI_COMM_WORLD, &info.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &info.size);
  info.host = host_name();

  LoggingOptions log;
  log.rank = info.rank;
  log.world = info.size;
  log.log_dir = options.log_dir;
  log.console_all = options.console_all;
  init_logging(argv != nullptr && *argv != nullptr ? (*argv)[0] : "v4rt", log);
  if (options.install_signal_handler) {
    google::InstallFailureSignalHandler();
    // SIGTERM is how mpirun ends the surviving ranks after an abort: no stack trace for that.
    std::signal(SIGTERM, SIG_DFL);
  }
  install_fault_handlers();
  detect_topology(&info);
  g_world = info;
  g_initialised = true;
  LOG(INFO) << "world: " << info.size << " ranks on " << info.num_nodes << " node(s); rank 0 on "
            << info.host;
  VLOG(1) << "rank " << info.rank << " local " << info.local_rank << "/" << info.local_size
          << " node " << info.node_idx << " host " << info.host;
  return g_world;
}

const WorldInfo& world() {
  CHECK(g_initialised) << "cluster::init_world has not been called";
  return g_world;
}

bool world_initialised() { return g_initialised; }

bool launched_by_mpirun() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(var)) return true;
  }
  return false;
}

bool mpi_running() { return mpi_usable(); }

void finalize_world() {
  if (g_we_initialised_mpi && mpi_usable()) MPI_Finalize();
  g_we_initialised_mpi = false;
}

void abort_world(const std::string& why, int code) {
  int rank = -1;
  if (mpi_usable()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "v4rt: rank %d on host %s: %s; aborting the job\n", rank,
               host_name().c_str(), why.c_str());
  std::fflush(stderr);
  if (mpi_usable()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace v4rt::cluster
