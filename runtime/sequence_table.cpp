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

void SequenceTable::copy(uint64_t src, uint64_t dst) {
  auto from = states_.find(src);
  CHECK(from != states_.end()) << "copy from unknown sequence " << src;
  CHECK(!states_.count(dst)) << "copy onto live sequence " << dst;
  auto& state = states_[dst];
  state = from->second->clone();
  auto spec = speculative_.find(src);
  if (spec != speculative_.end()) speculative_[dst] = spec->second->clone(*state);
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
