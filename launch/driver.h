// SPDX-License-Identifier: MIT
// The multi-rank driver of the model commands (DESIGN.md "Data flow of one serving step"): rank 0
// owns the requests and decides every step; it broadcasts a compact step plan to all ranks of the
// job; every rank runs the step on its shards; the logits are needed on rank 0 only (every rank
// of a replica ends a step with the same hidden state, so rank 0 computes them itself and the
// other ranks skip the head). A single-rank job runs the same code without any broadcast.
//
//   PlanChannel  the byte broadcast (size, then payload) from rank 0; usable for any plan format
//                (the server's StepPlan bytes travel the same way)
//   ForwardPlan  the plan of `logits` / `generate`: chunks of tokens for sequences named by id
//   Driver       owns this rank's sequence states; step() on rank 0, follow() on the others
//   ModelRun     start-up shared by the commands: MPI world when launched by mpirun or with a
//                layout, process groups, backend, checkpoint, sharded model, driver; at the end
//                it prints the bytes every rank sent per step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cluster/comm.h"
#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"

namespace v4rt::launch {

// Broadcast of plan bytes from world rank 0. The wire: one I64 broadcast of the size, then the
// payload as U8; bytes sent by rank 0 per plan = (world-1) * (8 + size). Waiting for the next plan
// has no deadline (the leader may idle); a dead rank still ends the job through mpirun.
class PlanChannel {
 public:
  explicit PlanChannel(cluster::Comm* world);  // nullptr or a world of 1: no communication
  bool leader() const { return world_ == nullptr || world_->rank() == 0; }
  void send(std::span<const uint8_t> bytes);   // leader
  std::vector<uint8_t> receive();              // followers
  const cluster::Comm* comm() const { return world_; }

 private:
  cluster::Comm* world_ = nullptr;
};

struct ForwardChunk {
  int32_t sequence = 0;        // a new id starts a new sequence
  bool all_logits = false;     // logits of every token of the chunk, else of the last one
  std::vector<int32_t> tokens;
};

struct ForwardPlan {
  std::vector<ForwardChunk> chunks;
  std::vector<int32_t> release;  // sequences freed after the step
  bool stop = false;             // followers return from follow()
};

// I32 words: [stop, num_chunks, num_release, (sequence, all_logits, num_tokens, tokens...)...,
// release...].
std::vector<uint8_t> encode_plan(const ForwardPlan& plan);
ForwardPlan decode_plan(std::span<const uint8_t> bytes);  // throws v4rt::Error on malformed bytes

class Driver {
 public:
  Driver(model::Model& model, PlanChannel& channel) : model_(model), channel_(channel) {}
  ~Driver();  // the leader releases its followers (stop) if it has not yet

  bool leader() const { return channel_.leader(); }
  // Leader: broadcasts `plan` and runs it; (*logits)[i] = chunk i's logits (see Model::step).
  void step(const ForwardPlan& plan, std::vector<std::vector<float>>* logits);
  // Leader: the followers leave follow(). Idempotent.
  void stop();
  // Followers: runs the leader's plans until stop. Returns the number of steps run.
  int64_t follow();

  int64_t steps() const { return steps_; }

 private:
  void run(const ForwardPlan& plan, std::vector<std::vector<float>>* logits);

  model::Model& model_;
  PlanChannel& channel_;
  std::map<int32_t, std::unique_ptr<model::SequenceState>> sequences_;
  int64_t steps_ = 0;
  bool stopped_ = false;
};

// True in a process started by mpirun / mpiexec (ModelRun then joins the MPI world).
bool launched_by_mpirun();

struct RunOptions {
  std::string model_dir;
  std::string config;            // runtime YAML; its `parallel:` section is the layout ("" = one rank)
  std::string numerics = "reference";
  std::string backend = "cpu";
  int device = 0;                // first GPU; rank r of a node uses device + local rank
  double timeout_s = 60.0;       // deadline of every model collective
};

// One rank's model and driver. Collective: every rank of the job constructs it.
class ModelRun {
 public:
  explicit ModelRun(const RunOptions& options);
  ~ModelRun();  // stops the followers, reports bytes per step, finalises MPI if it started it

  bool leader() const { return channel_->leader(); }
  int world_rank() const { return world_rank_; }
  model::Model& model() { return *model_; }
  Driver& driver() { return *driver_; }
  // NOTE: followers call driver().follow() and return; the leader reads the inputs (a bad input
  // throws on the leader only: the destructor still releases the followers) and drives the steps.

  // Bytes every rank sent per step (plan broadcast, TP, SP, EP), one line per rank on the leader,
  // empty on the followers. Collective; the destructor calls it (and logs it) when nobody has.
  std::string byte_report();

 private:
  void start(const RunOptions& options);

  bool mpi_ = false;
  int world_rank_ = 0;
  std::unique_ptr<cluster::ProcessGroups> groups_;
  std::unique_ptr<cluster::Comm> plan_comm_;
  std::unique_ptr<PlanChannel> channel_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::Checkpoint> ckpt_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<Driver> driver_;
  bool reported_ = false;
};

}  // namespace v4rt::launch
