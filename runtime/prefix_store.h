// SPDX-License-Identifier: MIT
// One rank's payloads of the prefix cache (docs/PREFIX_CACHE.md): the tail snapshots and entry
// blocks the PrefixTree names, keyed by its ids. Every rank applies the same tree results, each
// with its own slices (SP ranks keep the entries they own; the tails are the same everywhere).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>

#include "model/model.h"
#include "model/prefix_state.h"
#include "model/speculative.h"
#include "runtime/prefix_tree.h"

namespace v4rt::runtime {

class PrefixStore {
 public:
  PrefixStore(model::Model& model, int64_t block_tokens);

  // After PrefixTree::insert: stores the new points' snapshots (taken by the inserting sequence at
  // their positions; the ones used are moved out of `snapshots`) and the new blocks, extracted
  // from `sequence`; then drops result.freed.
  void apply(const InsertResult& result, std::map<int64_t, model::TailSnapshot>& snapshots,
             const model::SequenceState& sequence);
  // One point's snapshot (with the speculative tail of a speculative sequence), and one block
  // [index * block_tokens, end) extracted from `sequence` (standing at or past end).
  void put_point(PrefixId id, model::TailSnapshot tail, std::optional<model::SpeculativeTail> speculative);
  void put_block(PrefixId id, const model::SequenceState& sequence, int64_t index, int64_t end);
  void free(std::span<const PrefixId> ids);
  // A new sequence at match.position, built from the matched point and blocks.
  std::unique_ptr<model::SequenceState> resume(const PrefixMatch& match) const;
  // The speculative tail stored with `point` (nullptr when taken from a plain sequence).
  const model::SpeculativeTail* speculative_tail(PrefixId point) const;
  int64_t block_tokens() const { return block_tokens_; }

  int64_t bytes() const { return bytes_; }  // payload bytes held on this rank
  size_t num_points() const { return points_.size(); }
  size_t num_blocks() const { return blocks_.size(); }

 private:
  model::Model& model_;
  int64_t block_tokens_;
  std::map<PrefixId, model::TailSnapshot> points_;
  std::map<PrefixId, model::EntryBlock> blocks_;
  std::map<PrefixId, model::SpeculativeTail> speculative_;  // by point id
  int64_t bytes_ = 0;
};

// Byte functions for PrefixTreeOptions from the model config: the snapshot, and a block (entries
// in `storage`, the format the states keep) on the SP rank that stores the most (exact on a
// single rank).
void set_model_byte_sizes(PrefixTreeOptions& options, const model::ModelConfig& config,
                          const model::EntryOwnership& ownership, model::KvStorage storage = model::KvStorage::kF32);

}  // namespace v4rt::runtime
