// SPDX-License-Identifier: MIT
// One serving step as data. The scheduler (rank 0) decides a StepPlan; every rank applies it to its
// own sequence states through an Executor: first the resolutions of speculative verify chunks, then
// the state copies (prefix reuse), the MTP draft levels, one Model::step over the chunks, and the
// releases. The plan is a few PODs and vectors and has a
// byte encoding, so a distributed driver can broadcast it unchanged; sequence ids are the only
// names the ranks share.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "launch/sequence_table.h"
#include "model/model.h"

namespace v4rt::launch::serve {

using SeqId = uint64_t;

struct PlanChunk {
  SeqId seq = 0;
  int64_t start_pos = 0;    // tokens already in the sequence's state (checked by the executor)
  int32_t num_tokens = 0;   // this chunk's tokens in StepPlan::tokens, in chunk order
  uint8_t want_logits = 0;  // 1: logits of the chunk's last token are needed (sampling)
  ChunkKind kind = ChunkKind::kPlain;  // kVerify: logits of every token (want_logits is 1)
};

// The leader's verdict on a sequence's last verify chunk: keep its first `accepted` drafts.
struct PlanResolve {
  SeqId seq = 0;
  int32_t accepted = 0;
};

// Draft level `level` of `depth` of a speculative sequence; `token` is the decided next token
// (level 1) or the previous level's draft.
struct PlanDraft {
  SeqId seq = 0;
  int32_t level = 1;
  int32_t depth = 1;
  int32_t token = 0;
};

struct PlanCopy {
  SeqId src = 0;  // an existing state (e.g. a cached finished sequence)
  SeqId dst = 0;  // a new sequence that starts as an exact copy of src
};

struct StepPlan {
  uint64_t step_idx = 0;
  std::vector<PlanResolve> resolves;  // applied first
  std::vector<PlanCopy> copies;   // then the copies
  std::vector<PlanDraft> drafts;  // then the draft levels (MTP block)
  std::vector<PlanChunk> chunks;  // then one forward over all chunks
  std::vector<int32_t> tokens;    // [sum of chunks' num_tokens]
  std::vector<SeqId> releases;    // applied last: states freed
  uint8_t shutdown = 0;           // followers leave their loop

  bool empty() const {
    return resolves.empty() && copies.empty() && drafts.empty() && chunks.empty() && releases.empty() && !shutdown;
  }
  int64_t num_tokens() const { return int64_t(tokens.size()); }
};

// Little-endian byte encoding (magic, version, counts, arrays).
std::vector<uint8_t> serialize_plan(const StepPlan& plan);
// Throws v4rt::Error naming the field when the bytes are truncated or inconsistent.
StepPlan deserialize_plan(std::span<const uint8_t> bytes);

// Owns the sequence states of one rank, by id.
class Executor {
 public:
  // `mtp` (may be nullptr): the MTP block of plans with drafts and speculative chunks.
  explicit Executor(model::Model& model, model::Mtp* mtp = nullptr) : model_(model), table_(model) {
    table_.set_mtp(mtp);
  }

  // Applies `plan`. logits (may be nullptr) receives one row [vocab] per chunk that wants logits
  // ([num_tokens, vocab] for a verify chunk), in chunk order (an empty vector for the others);
  // draft_logits (may be nullptr) one row [vocab] per draft.
  void run(const StepPlan& plan, std::vector<std::vector<float>>* logits,
           std::vector<std::vector<float>>* draft_logits = nullptr);

  size_t num_sequences() const { return table_.size(); }
  bool has(SeqId id) const { return table_.has(id); }
  int64_t position(SeqId id) const { return table_.position(id); }

 private:
  model::Model& model_;
  SequenceTable table_;
};

}  // namespace v4rt::launch::serve
