// SPDX-License-Identifier: MIT
// PrefixCache: a most-recently-used list of finished sequences. A linear scan is enough: the list is
// bounded by the KV budget, and a comparison stops at the first differing token.
#include "runtime/prefix_cache.h"

#include <algorithm>

namespace v4rt::runtime {

namespace {

bool is_prefix(std::span<const int32_t> prefix, std::span<const int32_t> of) {
  return prefix.size() <= of.size() && std::equal(prefix.begin(), prefix.end(), of.begin());
}

}  // namespace

const CacheEntry* PrefixCache::match(std::span<const int32_t> prompt) {
  auto best = entries_.end();
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->tokens.empty() || it->tokens.size() >= prompt.size()) continue;
    if (best != entries_.end() && it->tokens.size() <= best->tokens.size()) continue;
    if (is_prefix(it->tokens, prompt)) best = it;
  }
  if (best == entries_.end()) return nullptr;
  entries_.splice(entries_.begin(), entries_, best);
  return &entries_.front();
}

std::vector<SeqId> PrefixCache::insert(CacheEntry entry) {
  std::vector<SeqId> superseded;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (is_prefix(it->tokens, entry.tokens)) {
      superseded.push_back(it->seq);
      bytes_ -= it->bytes;
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  bytes_ += entry.bytes;
  entries_.push_front(std::move(entry));
  return superseded;
}

std::optional<SeqId> PrefixCache::evict_lru(SeqId keep, int64_t* bytes) {
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    if (keep != 0 && it->seq == keep) continue;
    const SeqId seq = it->seq;
    bytes_ -= it->bytes;
    if (bytes) *bytes = it->bytes;
    entries_.erase(std::next(it).base());
    return seq;
  }
  return std::nullopt;
}

std::vector<SeqId> PrefixCache::clear() {
  std::vector<SeqId> out;
  for (const CacheEntry& e : entries_) out.push_back(e.seq);
  entries_.clear();
  bytes_ = 0;
  return out;
}

int64_t PrefixCache::num_tokens() const {
  int64_t n = 0;
  for (const CacheEntry& e : entries_) n += int64_t(e.tokens.size());
  return n;
}

}  // namespace v4rt::runtime
