// SPDX-License-Identifier: MIT
// ModelRun: the per-rank start-up shared by the model commands (generate, logits, batch, serve).
// Collective: every rank of the job constructs it. It joins the MPI world when launched by
// mpirun, builds the process groups of the config's `parallel:` layout, the backend, the
// checkpoint, the sharded model (and the MTP block when asked), waits until every rank has
// loaded, and sets up this rank's side of the runtime core (runtime/, docs/RUNTIME.md): the
// Executor, the PlanLink and the Leader (world rank 0) or the Follower (every other rank).
// At the end it prints the bytes every rank sent per step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cluster/comm.h"
#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/mtp.h"
#include "runtime/executor.h"
#include "runtime/leader.h"
#include "runtime/plan_link.h"

namespace CLI {
class App;
}

namespace v4rt::launch {

// --prefill-chunk N on the model commands: most prompt tokens of one sequence per step (-1 when
// not given: the runtime config's `prefill_chunk`).
void add_prefill_chunk_option(CLI::App* app, int* prefill_chunk);
// The flag's value when given (>= 0), else `prefill_chunk:` of the runtime YAML `config` (its
// default, RuntimeConfig::kDefaultPrefillChunk, when there is no config).
int resolve_prefill_chunk(int flag, const std::string& config);

struct RunOptions {
  std::string model_dir;
  std::string config;            // runtime YAML; its `parallel:` section is the layout ("" = one rank)
  std::string numerics = "reference";
  std::string backend = "cpu";
  int device = 0;                // first GPU; rank r of a node uses device + local rank
  double timeout_s = 60.0;       // deadline of every model collective and of every plan broadcast
  double load_timeout_s = 1800;  // deadline of the "every rank loaded" barrier
  bool mtp = false;              // load the MTP block on every rank (speculative decoding)
  // Decode steps as CUDA graphs when the config's `cuda_graphs:` also allows it (--no-graphs: off).
  bool graphs = true;
};

class ModelRun {
 public:
  explicit ModelRun(const RunOptions& options);
  ~ModelRun();  // stops the followers, reports bytes per step, finalises MPI if it started it

  bool leader() const { return link_->leader(); }
  int world_rank() const { return world_rank_; }
  int num_ranks() const { return link_->size(); }
  model::Model& model() { return *model_; }
  const model::Checkpoint& checkpoint() const { return *ckpt_; }
  model::Mtp* mtp() { return mtp_.get(); }  // set when RunOptions::mtp
  // Leader only: runs every plan on every rank.
  runtime::Leader& lead();
  // Followers: the follower loop, until the leader's shutdown plan. Returns the plans run.
  int64_t follow();
  // NOTE: followers call follow() and return; the leader reads the inputs (a bad input throws on
  // the leader only: the destructor still releases the followers) and drives the steps.

  // Bytes every rank sent per step (plan link, TP, SP, EP), one line per rank on the leader,
  // empty on the followers. Collective; the destructor calls it (and logs it) when nobody has.
  std::string byte_report();

 private:
  void start(const RunOptions& options);
  void release();
  int64_t num_steps() const;

  bool mpi_ = false;
  int world_rank_ = 0;
  std::unique_ptr<cluster::ProcessGroups> groups_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::Checkpoint> ckpt_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<model::Mtp> mtp_;
  std::unique_ptr<runtime::PlanLink> link_;
  std::unique_ptr<runtime::Executor> executor_;
  std::unique_ptr<runtime::Leader> leader_;
  std::unique_ptr<runtime::Follower> follower_;
  bool reported_ = false;
};

}  // namespace v4rt::launch
