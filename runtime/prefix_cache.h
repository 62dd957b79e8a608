// SPDX-License-Identifier: MIT
// Agent prefix reuse (chat-format §10): finished sequences' states are kept, keyed by the token
// ids they hold. A new prompt whose first tokens equal a kept sequence's tokens starts from a copy
// of that state and prefills only the rest, which gives the same logits as a full recompute since
// the state after any chunking of the same tokens is the same. Entries are evicted least recently
// used first when running requests need the memory. The cache holds ids and token lists only; the
// states themselves live in the Executor of every rank.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <vector>

#include "runtime/step_plan.h"

namespace v4rt::runtime {

struct CacheEntry {
  SeqId seq = 0;
  std::vector<int32_t> tokens;  // exactly the tokens in the state, in order
  int64_t bytes = 0;            // memory charged for the state
};

class PrefixCache {
 public:
  // The longest entry whose tokens are a proper prefix of `prompt` (at least one prompt token is
  // left to compute, so the request has logits to sample from), or nullptr. Marks it used.
  const CacheEntry* match(std::span<const int32_t> prompt);
  // Adds a finished sequence. Entries whose tokens are a prefix of the new one are superseded
  // (an agent's next turn extends them) and returned for release.
  std::vector<SeqId> insert(CacheEntry entry);
  // Removes the least recently used entry other than `keep` and returns its sequence (and its
  // bytes in *bytes when not null); nullopt when there is none.
  std::optional<SeqId> evict_lru(SeqId keep = 0, int64_t* bytes = nullptr);
  // Removes every entry and returns their sequences.
  std::vector<SeqId> clear();

  int64_t bytes() const { return bytes_; }
  int64_t num_tokens() const;
  size_t size() const { return entries_.size(); }

 private:
  std::list<CacheEntry> entries_;  // most recently used first
  int64_t bytes_ = 0;
};

}  // namespace v4rt::runtime
