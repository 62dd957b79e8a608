// SPDX-License-Identifier: MIT
// One rank's sequence states by id; the Executor is its only user. A sequence that takes part in speculative
// decoding also owns a model::SpeculativeSequence (the MTP block's state and the streams it has not
// seen). Every rank applies the same operations in the same order, so the collective MTP forwards
// and Model::step calls line up across the ranks of a sharded job.
//
// The order of one plan, as the Executor runs it:
//   resolve -> (prefix stores) -> adopt (prefix resumes) -> draft -> chunk ... Model::step ...
//   after_step -> release
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/mtp.h"
#include "model/speculative.h"
#include "runtime/step_plan.h"

namespace v4rt::runtime {

class SequenceTable {
 public:
  explicit SequenceTable(model::Model& model) : model_(model) {}

  // The MTP block for speculative sequences (nullptr: none).
  void set_mtp(model::Mtp* mtp) { mtp_ = mtp; }
  model::Mtp* mtp() const { return mtp_; }

  bool has(uint64_t id) const { return states_.count(id) != 0; }
  size_t size() const { return states_.size(); }
  int64_t position(uint64_t id) const;  // tokens in the state; the id must exist

  // Keeps the first `accepted` drafts of the sequence's verify chunk. A sequence released since
  // has nothing to resolve (no-op).
  void resolve(uint64_t id, int accepted);
  // `id` (new) takes `state` (a sequence resumed from a prefix point) and, when `speculative` is
  // given, a speculative state resumed from that tail over it.
  void adopt(uint64_t id, std::unique_ptr<model::SequenceState> state, const model::SpeculativeTail* speculative);
  const model::SequenceState& state(uint64_t id) const;
  // The speculative state of `id`, or nullptr for a plain sequence.
  const model::SpeculativeSequence* speculative_or_null(uint64_t id) const;
  // Draft level `level` of `depth` (model::SpeculativeSequence::draft). Collective.
  void draft(uint64_t id, int level, int depth, int32_t token, std::vector<float>* logits);
  // The StepChunk of a chunk for Model::step; an unknown id starts a new sequence. `tokens` must
  // outlive the step. kHidden chunks need after_step() once the step has run.
  model::StepChunk chunk(uint64_t id, std::span<const int32_t> tokens, bool all_logits, ChunkKind kind);
  // After the Model::step of a kHidden chunk: the MTP block sees its streams. Collective.
  void after_step(uint64_t id);
  void release(uint64_t id);

 private:
  model::SpeculativeSequence& speculative(uint64_t id);

  model::Model& model_;
  model::Mtp* mtp_ = nullptr;
  std::map<uint64_t, std::unique_ptr<model::SequenceState>> states_;
  // NOTE: declared after states_ (each refers to its SequenceState, so it is destroyed first).
  std::map<uint64_t, std::unique_ptr<model::SpeculativeSequence>> speculative_;
};

}  // namespace v4rt::runtime
