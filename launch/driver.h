// SPDX-License-Identifier: MIT
// The multi-rank driver of the model commands (DESIGN.md "Data flow of one serving step"): rank 0
// owns the requests and decides every step; it broadcasts a compact step plan to all ranks of the
// job; every rank runs the step on its shards; the logits are needed on rank 0 only (every rank
// of a replica ends a step with the same hidden state, so rank 0 computes them itself and the
// other ranks skip the head). A single-rank job runs the same code without any broadcast.
//
//   PlanChannel  the byte broadcast (size, then payload) from rank 0; usable for any plan format
//                (the server's StepPlan bytes travel the same way)
//   ForwardPlan  the plan of `logits` / `generate`: chunks of tokens for sequences named by id, and
//                the parts of a speculative step (MTP drafts, verify chunks, their resolution)
//   Driver       owns this rank's sequence states; step() on rank 0, follow() on the others;
//                speculate() runs one speculative step of many sequences on every rank
//   ModelRun     start-up shared by the commands: MPI world when launched by mpirun or with a
//                layout, process groups, backend, checkpoint, sharded model, MTP block when asked,
//                driver; at the end
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
#include "launch/sequence_table.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/speculative.h"

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
  // Speculative sequences (the Driver needs the MTP block): `hidden` marks a prompt chunk whose
  // final streams feed the MTP block after the step; `verify` a verify chunk [next, d1..dk] (all
  // logits; a later plan resolves it). See model::SpeculativeSequence.
  bool hidden = false;
  bool verify = false;
};

// Draft level `level` of `depth` for a speculative sequence: the input token is the decided next
// token (level 1) or the previous level's draft.
struct DraftOp {
  int32_t sequence = 0;
  int32_t level = 1;
  int32_t depth = 1;
  int32_t token = 0;
};

// The leader's decision on a sequence's last verify chunk: keep its first `accepted` drafts (the
// main state rolls back past the first rejection, the MTP block keeps the accepted streams).
struct ResolveOp {
  int32_t sequence = 0;
  int32_t accepted = 0;
};

// A plan runs in this order on every rank: resolve, drafts, chunks (one Model::step), release.
struct ForwardPlan {
  std::vector<ForwardChunk> chunks;
  std::vector<int32_t> release;  // sequences freed after the step
  bool stop = false;             // followers return from follow()
  std::vector<ResolveOp> resolve;
  std::vector<DraftOp> drafts;
};

// I32 words: [stop, num_chunks, num_release, num_resolve, num_drafts,
// (sequence, flags, num_tokens, tokens...)..., release..., (sequence, accepted)...,
// (sequence, level, depth, token)...]; flags: 1 all_logits, 2 hidden, 4 verify.
std::vector<uint8_t> encode_plan(const ForwardPlan& plan);
ForwardPlan decode_plan(std::span<const uint8_t> bytes);  // throws v4rt::Error on malformed bytes

// One sequence's speculative step on the leader (Driver::speculate): the input, then the outcome.
struct SpeculativeTurn {
  int32_t sequence = 0;
  int32_t next = 0;                              // decided, not yet processed
  model::SpeculativeSampler* sampler = nullptr;  // decides the drafts and the acceptance
  std::vector<int32_t> drafts;                   // d1..dk
  std::vector<float> logits;                     // [k+1, vocab] verify logits (row i after token i)
  int accepted = 0;                              // drafts kept
  int32_t after = -1;                            // the token after them (the next `next`)
  // The tokens this step decided: the accepted drafts, then `after`.
  std::vector<int32_t> emitted() const;
};

class Driver {
 public:
  Driver(model::Model& model, PlanChannel& channel) : model_(model), channel_(channel), table_(model) {}
  ~Driver();  // the leader releases its followers (stop) if it has not yet

  bool leader() const { return channel_.leader(); }
  // The MTP block for speculative sequences (every rank sets the same; nullptr: none).
  void set_mtp(model::Mtp* mtp) { table_.set_mtp(mtp); }
  model::Mtp* mtp() const { return table_.mtp(); }
  // Leader: broadcasts `plan` and runs it; (*logits)[i] = chunk i's logits (see Model::step);
  // (*draft_logits)[i] = the MTP logits of plan.drafts[i] (may be nullptr). The resolutions of
  // the last speculate() go first.
  void step(const ForwardPlan& plan, std::vector<std::vector<float>>* logits,
            std::vector<std::vector<float>>* draft_logits = nullptr);
  // Leader: one speculative step of every turn together. `depth` plans each carry one draft level
  // of every turn (the leader picks the drafts from the MTP logits between them); one plan then
  // carries every turn's verify chunk plus `extra`'s chunks and releases (other sequences' prompt
  // chunks), so the whole batch verifies in one Model::step; (*extra_logits)[i] = extra.chunks[i]'s.
  // The acceptance is decided here; every rank applies it at the start of the next plan.
  void speculate(int depth, std::span<SpeculativeTurn> turns, const ForwardPlan& extra,
                 std::vector<std::vector<float>>* extra_logits);
  // Totals over every speculate() turn (leader).
  const model::SpeculativeStats& speculative_stats() const { return spec_stats_; }
  // Leader: the followers leave follow(). Idempotent.
  void stop();
  // Followers: runs the leader's plans until stop. Returns the number of steps run.
  int64_t follow();

  int64_t steps() const { return steps_; }

 private:
  void run(const ForwardPlan& plan, std::vector<std::vector<float>>* logits,
           std::vector<std::vector<float>>* draft_logits);
  model::Model& model_;
  PlanChannel& channel_;
  SequenceTable table_;
  std::vector<ResolveOp> pending_resolve_;  // leader: decided by speculate(), sent with the next plan
  model::SpeculativeStats spec_stats_;
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
  bool mtp = false;              // load the MTP block on every rank (speculative decoding)
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
  const model::Checkpoint& checkpoint() const { return *ckpt_; }
  model::Mtp* mtp() { return mtp_.get(); }  // set when RunOptions::mtp
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
  std::unique_ptr<model::Mtp> mtp_;
  std::unique_ptr<Driver> driver_;
  bool reported_ = false;
};

}  // namespace v4rt::launch
