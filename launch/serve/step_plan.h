// SPDX-License-Identifier: MIT
// One serving step as data. The scheduler (rank 0) decides a StepPlan; every rank applies it to its
// own sequence states through an Executor: first the state copies (prefix reuse), then one
// Model::step over the chunks, then the releases. The plan is a few PODs and vectors and has a
// byte encoding, so a distributed driver can broadcast it unchanged; sequence ids are the only
// names the ranks share.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "model/model.h"

namespace v4rt::launch::serve {

using SeqId = uint64_t;

struct PlanChunk {
  SeqId seq = 0;
  int64_t start_pos = 0;    // tokens already in the sequence's state (checked by the executor)
  int32_t num_tokens = 0;   // this chunk's tokens in StepPlan::tokens, in chunk order
  uint8_t want_logits = 0;  // 1: logits of the chunk's last token are needed (sampling)
};

struct PlanCopy {
  SeqId src = 0;  // an existing state (e.g. a cached finished sequence)
  SeqId dst = 0;  // a new sequence that starts as an exact copy of src
};

struct StepPlan {
  uint64_t step_idx = 0;
  std::vector<PlanCopy> copies;   // applied first
  std::vector<PlanChunk> chunks;  // then one forward over all chunks
  std::vector<int32_t> tokens;    // [sum of chunks' num_tokens]
  std::vector<SeqId> releases;    // applied last: states freed
  uint8_t shutdown = 0;           // followers leave their loop

  bool empty() const { return copies.empty() && chunks.empty() && releases.empty() && !shutdown; }
  int64_t num_tokens() const { return int64_t(tokens.size()); }
};

// Little-endian byte encoding (magic, version, counts, arrays).
std::vector<uint8_t> serialize_plan(const StepPlan& plan);
// Throws v4rt::Error naming the field when the bytes are truncated or inconsistent.
StepPlan deserialize_plan(std::span<const uint8_t> bytes);

// Owns the SequenceStates of one rank, by id.
class Executor {
 public:
  explicit Executor(model::Model& model) : model_(model) {}

  // Applies `plan`. logits (may be nullptr) receives one row [vocab] per chunk that wants logits,
  // in chunk order (an empty vector for the others).
  void run(const StepPlan& plan, std::vector<std::vector<float>>* logits);

  size_t num_sequences() const { return states_.size(); }
  bool has(SeqId id) const { return states_.count(id) != 0; }
  int64_t position(SeqId id) const;

 private:
  model::Model& model_;
  std::unordered_map<SeqId, std::unique_ptr<model::SequenceState>> states_;
};

}  // namespace v4rt::launch::serve
