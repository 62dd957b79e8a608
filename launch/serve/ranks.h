// SPDX-License-Identifier: MIT
// The multi-rank side of `v4rt serve` (DESIGN.md "Data flow of one serving step"). Rank 0 runs the
// HTTP server and the Engine; every StepPlan the engine runs is first broadcast (serialize_plan)
// to the follower ranks, which apply the same plans in the same order to their own Executor, so
// every rank holds the same sequence states. With one rank nothing is sent.
//
//   ServeRanks    the plan broadcast over its own communicator, with a deadline on every plan:
//                 the leader sends an empty plan (a heartbeat) when it has been idle for a while,
//                 so a follower whose leader is gone or stuck stops waiting; the load barrier
//                 (/health turns ready only once every rank has loaded); the follower loop.
//   StopWatch     SIGINT/SIGTERM: a flag for the main loop, and a watchdog that ends the process
//                 (the whole job under mpirun) when the clean shutdown does not finish in time.
//   Fault path    on the leader, a fatal error (a collective past its deadline, a peer gone)
//                 first ends every request with 503 and then aborts the job.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "cluster/comm.h"
#include "launch/serve/engine.h"
#include "launch/serve/step_plan.h"
#include "model/model.h"
#include "model/mtp.h"

namespace v4rt::launch::serve {

struct RankOptions {
  double plan_timeout_s = 5.0;   // deadline of one plan broadcast (followers wait at most this long)
  double heartbeat_s = 1.0;      // the idle leader sends an empty plan this often
  double load_timeout_s = 1800;  // deadline of the "every rank loaded" barrier
};

class ServeRanks {
 public:
  // Collective over MPI_COMM_WORLD when `mpi` (every rank constructs it at the same point); with
  // mpi false or a world of one rank it communicates nothing.
  ServeRanks(bool mpi, const RankOptions& options);
  ~ServeRanks();

  bool leader() const { return rank_ == 0; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // Collective: returns once every rank has called it (after loading its shards).
  void wait_all_loaded();
  // Leader: the engine broadcasts every plan before running it and a heartbeat when idle; a fatal
  // error anywhere in this process first fails the engine's requests (503), then aborts the job.
  void attach(Engine& engine);
  // Followers: receive -> deserialize_plan -> Executor::run until the shutdown plan. Returns the
  // number of plans run (heartbeats excluded). A malformed plan or a failed step aborts the job.
  // `mtp`: the MTP block when the server speculates (--mtp N), else nullptr.
  int64_t follow(model::Model& model, model::Mtp* mtp = nullptr);

 private:
  void send(const StepPlan& plan);

  RankOptions options_;
  int rank_ = 0;
  int size_ = 1;
  std::unique_ptr<cluster::Comm> plan_comm_;  // plans, deadline plan_timeout_s
  std::unique_ptr<cluster::Comm> load_comm_;  // the load barrier, deadline load_timeout_s
  std::chrono::steady_clock::time_point last_send_;
};

// Installs SIGINT/SIGTERM handlers that only record the signal; SIGPIPE is ignored.
void install_stop_signals();
// The signal received (0: none).
int stop_signal();

// Once a stop signal has arrived, gives the clean shutdown `grace` to call done(); past that the
// process ends: the job is aborted under MPI (naming `what`), a single process exits with code 2.
class StopWatch {
 public:
  StopWatch(std::chrono::milliseconds grace, std::string what);
  ~StopWatch();
  void done();

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Ends the job from this rank: under MPI every rank (MPI_Abort), else this process. `why` is logged.
[[noreturn]] void abort_job(const std::string& why, int code);

}  // namespace v4rt::launch::serve
