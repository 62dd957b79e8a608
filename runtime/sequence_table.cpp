// SPDX-License-Identifier: MIT
// SequenceTable: per-rank sequence states and their speculative parts (see sequence_table.h).
#include "runtime/sequence_table.h"

#include <glog/logging.h>

namespace v4rt::runtime {

int64_t SequenceTable::position(uint64_t id) const {
  auto it = states_.find(id);
  CHECK(it != states_.end()) << "no sequence " << id;
  return it->second->position();
}

model::SpeculativeSequence& SequenceTable::speculative(uint64_t id) {
  auto it = speculative_.find(id);
  CHECK(it != speculative_.end()) << "sequence " << id << " has no speculative state";
  return *it->second;
}

void SequenceTable::resolve(uint64_t id, int accepted) {
  auto it = speculative_.find(id);
  if (it != speculative_.end()) it->second->resolve(accepted);
}

void SequenceTable::adopt(uint64_t id, std::unique_ptr<model::SequenceState> state,
                          const model::SpeculativeTail* speculative) {
  CHECK(!states_.count(id)) << "prefix resume onto live sequence " << id;
  model::SequenceState& s = *state;
  states_[id] = std::move(state);
  if (!speculative) return;
  CHECK(mtp_) << "sequence " << id << ": a speculative prefix point without the MTP block";
  speculative_[id] = model::SpeculativeSequence::resume(model_, *mtp_, s, *speculative);
}

const model::SequenceState& SequenceTable::state(uint64_t id) const {
  auto it = states_.find(id);
  CHECK(it != states_.end()) << "no sequence " << id;
  return *it->second;
}

const model::SpeculativeSequence* SequenceTable::speculative_or_null(uint64_t id) const {
  auto it = speculative_.find(id);
  return it == speculative_.end() ? nullptr : it->second.get();
}

void SequenceTable::draft(uint64_t id, int level, int depth, int32_t token, std::vector<float>* logits) {
  speculative(id).draft(level, depth, token, logits);
}

model::StepChunk SequenceTable::chunk(uint64_t id, std::span<const int32_t> tokens, bool all_logits,
                                      ChunkKind kind) {
  auto& state = states_[id];
  if (!state) state = model_.new_sequence();
  if (kind == ChunkKind::kPlain) {
    model::StepChunk sc;
    sc.sequence = state.get();
    sc.tokens = tokens;
    sc.all_logits = all_logits;
    return sc;
  }
  CHECK(mtp_) << "sequence " << id << ": a speculative chunk without the MTP block";
  auto& spec = speculative_[id];
  if (!spec) spec = std::make_unique<model::SpeculativeSequence>(model_, *mtp_, *state);
  return kind == ChunkKind::kVerify ? spec->verify_chunk(tokens) : spec->prompt_chunk(tokens, all_logits);
}

void SequenceTable::after_step(uint64_t id) { speculative(id).after_prompt_chunk(); }

void SequenceTable::release(uint64_t id) {
  speculative_.erase(id);
  states_.erase(id);
}

}  // namespace v4rt::runtime
