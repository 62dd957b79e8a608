// SPDX-License-Identifier: MIT
// The Executor: applies StepPlans to this rank's sequence states. Every rank of a job owns one
// and applies the same plans in the same order (the leader through Leader::run, the others
// through Follower::run), so every rank holds the same sequence states and the collectives of
// Model::step and of the MTP block line up. It is the only user of the SequenceTable.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "model/model.h"
#include "model/mtp.h"
#include "runtime/prefix_store.h"
#include "runtime/sequence_table.h"
#include "runtime/step_plan.h"

namespace v4rt::runtime {

class Executor {
 public:
  // `mtp` (may be nullptr): the MTP block of plans with drafts and speculative chunks.
  explicit Executor(model::Model& model, model::Mtp* mtp = nullptr) : model_(model), table_(model) {
    table_.set_mtp(mtp);
  }

  // Applies `plan`. logits (may be nullptr) receives per chunk: one row [vocab] (kLogitsLast),
  // [num_tokens, vocab] (kLogitsAll, verify chunks) or an empty vector (kLogitsNone,
  // kSampleLast), in chunk order; draft_logits (may be nullptr) one row [vocab] per draft;
  // sampled (may be nullptr) per chunk the token a kSampleLast chunk drew on the device (id -1
  // for the others). Without `sampled` (the followers) kSampleLast chunks skip the head. A chunk
  // whose start_pos is not its sequence's position is a fatal error (the ranks would diverge).
  void run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
           std::vector<std::vector<float>>* draft_logits = nullptr,
           std::vector<model::SampledToken>* sampled = nullptr);

  model::Model& model() { return model_; }
  model::Mtp* mtp() const { return table_.mtp(); }
  size_t num_sequences() const { return table_.size(); }
  bool has(SeqId id) const { return table_.has(id); }
  int64_t position(SeqId id) const { return table_.position(id); }
  // This rank's prefix-cache payloads (nullptr until the first PlanStore names the block size).
  const PrefixStore* prefix_store() const { return store_.get(); }
  // Tail snapshots kept by take_point chunks and not yet stored or dropped.
  size_t num_kept_points() const;

 private:
  // A tail snapshot a take_point chunk kept, until the PlanStore that follows.
  struct KeptPoint {
    model::TailSnapshot tail;
    std::optional<model::SpeculativeTail> speculative;
  };
  void store(const PlanStore& s);
  void resume(const PlanResume& r);
  KeptPoint snapshot(SeqId seq) const;

  model::Model& model_;
  SequenceTable table_;
  std::unique_ptr<PrefixStore> store_;
  std::map<SeqId, std::map<int64_t, KeptPoint>> kept_;  // by sequence, by position
};

}  // namespace v4rt::runtime
