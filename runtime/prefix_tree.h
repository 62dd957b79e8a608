// SPDX-License-Identifier: MIT
// The prefix cache's radix tree (docs/PREFIX_CACHE.md): keyed by token ids, it decides which
// resumable points and entry blocks exist and names them by id; the payloads (tail snapshots,
// entry blocks: model/prefix_state.h) live on every rank, keyed by those ids. A node holds a span
// of tokens, the full entry blocks whose last token lies in its span and, when a resumable point
// sits at its end, the point and the point's partial block. Blocks are never written once named:
// a later point inside the same block gets a new partial block (copy on write), so a point stays
// valid while its node lives. Leaves are evicted least recently used first, never while pinned.
// NOTE: deterministic: the same calls in the same order give the same ids, matches and evictions
// on every rank (ordered maps, a logical clock, ties broken by node id).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

namespace v4rt::runtime {

using PrefixId = uint64_t;  // points and blocks share one id space; 0: none

struct PrefixTreeOptions {
  int64_t block_tokens = 256;  // tokens per entry block (a multiple of every compress ratio)
  int64_t budget_bytes = 0;    // insert() evicts down to this; 0: no limit
  // Bytes charged for a tail snapshot at `position` and for a block covering [begin, end)
  // (model::tail_snapshot_bytes / entry_block_bytes). Required.
  std::function<int64_t(int64_t position)> point_bytes;
  std::function<int64_t(int64_t begin, int64_t end)> block_bytes;
};

struct PrefixMatch {
  int64_t position = 0;          // prompt tokens the point covers; 0: no match
  PrefixId point = 0;
  std::vector<PrefixId> blocks;  // entry blocks 0, 1, ... covering [0, position); the last may be partial
};

struct PointSpec {
  PrefixId id = 0;
  int64_t position = 0;  // snapshot the sequence's tail at this position
};
struct BlockSpec {
  PrefixId id = 0;
  int64_t index = 0;  // extract_block(index, block_tokens, end) from the inserting sequence
  int64_t end = 0;
};
// What every rank does after an insert, in this order: store the new points and blocks, then drop
// the freed ids (a new one may be freed at once when it alone exceeds the budget).
struct InsertResult {
  std::vector<PointSpec> points;
  std::vector<BlockSpec> blocks;
  std::vector<PrefixId> freed;
};

struct PrefixTreeStats {
  int64_t lookups = 0;
  int64_t hits = 0;            // lookups that found a point
  int64_t reused_tokens = 0;   // sum of matched positions
  int64_t points = 0;          // points now held
  int64_t blocks = 0;          // blocks now held
  int64_t nodes = 0;           // nodes now held (root excluded)
  int64_t bytes = 0;           // charged bytes now held
  int64_t evicted_points = 0;
  int64_t evicted_bytes = 0;
};

class PrefixTree {
 public:
  explicit PrefixTree(PrefixTreeOptions options);
  ~PrefixTree();

  // The longest point that `prompt` extends with at least one token left over (the request needs
  // the logits of its last prompt token). With `record`, marks its path used and counts the
  // lookup; without, only looks (a scheduler deciding whether a request can start yet).
  PrefixMatch match(std::span<const int32_t> prompt, bool record = true);
  // Adds points at `positions` (increasing, in [1, tokens.size()]) on the path of `tokens`, and the
  // full blocks those points need; existing points and blocks are reused. Then evicts down to the
  // budget. The inserting sequence must stand at or past the last position (for the snapshots) and
  // still hold its entries (for the blocks).
  InsertResult insert(std::span<const int32_t> tokens, std::span<const int64_t> positions);
  // A running sequence resumed from `point` pins it: its node is not evicted until unpinned.
  void pin(PrefixId point);
  void unpin(PrefixId point);
  // Evicts least recently used unpinned leaves until at least `bytes` are freed or none is left;
  // returns the freed ids (points and blocks).
  std::vector<PrefixId> evict(int64_t bytes);

  const PrefixTreeStats& stats() const { return stats_; }
  int64_t bytes() const { return stats_.bytes; }
  const PrefixTreeOptions& options() const { return options_; }

  // The resumable points of a prompt of `prompt_tokens` tokens resumed at `from`, in increasing
  // order: every multiple of `every_n` (0: none), every message boundary, and the prompt point
  // prompt_tokens - 1 (so that the same prompt again resumes there and computes one token); only
  // positions in (from, prompt_tokens - 1].
  static std::vector<int64_t> plan_points(int64_t prompt_tokens, int64_t from, std::span<const int64_t> boundaries,
                                          int64_t every_n);

 private:
  struct Node;
  Node* descend(std::span<const int32_t> tokens, int64_t target, std::vector<Node*>* path);
  Node* split(Node* node, int64_t keep);
  void remove_leaf(Node* node, std::vector<PrefixId>* freed);
  PrefixId next_id() { return ++last_id_; }

  PrefixTreeOptions options_;
  std::unique_ptr<Node> root_;
  std::map<PrefixId, Node*> points_;  // point id -> the node it ends
  PrefixTreeStats stats_;
  PrefixId last_id_ = 0;
  uint64_t last_node_ = 0;
  uint64_t clock_ = 0;
};

// The points of prompts still being prefilled (batch sharing): a request admitted while another is
// computing a prefix it shares waits for that request's point instead of computing the prefix
// again. The scheduler inserts each point into the tree right after the chunk that ends there.
// Deterministic like the tree (ordered by sequence id).
class InFlightPoints {
 public:
  void add(uint64_t seq, std::span<const int32_t> tokens, std::span<const int64_t> positions);
  void remove(uint64_t seq);
  // The longest planned point that `prompt` extends with at least one token left over and that
  // lies beyond `matched` (the tree's match), with its owner in *seq; 0 when none.
  int64_t longest(std::span<const int32_t> prompt, int64_t matched, uint64_t* seq) const;
  size_t size() const { return plans_.size(); }

 private:
  struct Plan {
    std::vector<int32_t> tokens;
    std::vector<int64_t> positions;  // increasing
  };
  std::map<uint64_t, Plan> plans_;
};

}  // namespace v4rt::runtime
