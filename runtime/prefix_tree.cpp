// SPDX-License-Identifier: MIT
// PrefixTree: nodes, splits, matching, insertion with blocks, LRU eviction of leaves.
#include "runtime/prefix_tree.h"

#include <algorithm>

#include "common/check.h"

namespace v4rt::runtime {

struct PrefixTree::Node {
  uint64_t id = 0;                      // creation order: the LRU tie-break
  int64_t begin = 0;                    // the span covers token positions [begin, begin + tokens.size())
  std::vector<int32_t> tokens;
  Node* parent = nullptr;
  std::map<int32_t, std::unique_ptr<Node>> children;  // by first token
  std::map<int64_t, PrefixId> full_blocks;            // index -> id, for (index+1)*B in (begin, end]
  PrefixId point = 0;                                  // a point at end(), or 0
  PrefixId partial_block = 0;                          // the point's block [end/B*B, end) when end % B != 0
  int64_t bytes = 0;                                   // charged: point, its partial block, full blocks
  uint64_t last_used = 0;
  int pins = 0;
  int64_t end() const { return begin + int64_t(tokens.size()); }
};

PrefixTree::PrefixTree(PrefixTreeOptions options) : options_(std::move(options)), root_(std::make_unique<Node>()) {
  V4RT_REQUIRE(options_.block_tokens > 0, "prefix tree block of " << options_.block_tokens << " tokens");
  V4RT_REQUIRE(options_.budget_bytes >= 0, "prefix tree budget of " << options_.budget_bytes << " bytes");
  V4RT_REQUIRE(options_.point_bytes && options_.block_bytes, "prefix tree options need point_bytes and block_bytes");
}

PrefixTree::~PrefixTree() = default;

// Splits `node` after its first `keep` tokens: a new node takes that head (and the full blocks that
// end in it) and becomes node's parent. Returns the head.
PrefixTree::Node* PrefixTree::split(Node* node, int64_t keep) {
  CHECK(keep > 0 && keep < int64_t(node->tokens.size())) << "split of a " << node->tokens.size() << "-token node at " << keep;
  auto head = std::make_unique<Node>();
  head->id = ++last_node_;
  head->begin = node->begin;
  head->tokens.assign(node->tokens.begin(), node->tokens.begin() + keep);
  head->parent = node->parent;
  head->last_used = node->last_used;
  const int64_t cut = head->end();
  for (auto it = node->full_blocks.begin(); it != node->full_blocks.end() && (it->first + 1) * options_.block_tokens <= cut;) {
    const int64_t b = options_.block_bytes(it->first * options_.block_tokens, (it->first + 1) * options_.block_tokens);
    head->bytes += b;
    node->bytes -= b;
    head->full_blocks.insert(*it);
    it = node->full_blocks.erase(it);
  }
  Node* parent = node->parent;
  std::unique_ptr<Node>& slot = parent->children.at(node->tokens.front());
  std::unique_ptr<Node> tail = std::move(slot);
  tail->tokens.erase(tail->tokens.begin(), tail->tokens.begin() + keep);
  tail->begin = cut;
  tail->parent = head.get();
  Node* h = head.get();
  h->children.emplace(tail->tokens.front(), std::move(tail));
  slot = std::move(head);
  ++stats_.nodes;
  return h;
}

// Walks the path of tokens [0, target), creating and splitting nodes so that one ends exactly at
// `target`; returns it, with the nodes on the way (root excluded) in *path.
PrefixTree::Node* PrefixTree::descend(std::span<const int32_t> tokens, int64_t target, std::vector<Node*>* path) {
  Node* node = root_.get();
  int64_t pos = 0;
  while (pos < target) {
    auto it = node->children.find(tokens[size_t(pos)]);
    if (it == node->children.end()) {
      auto leaf = std::make_unique<Node>();
      leaf->id = ++last_node_;
      leaf->begin = pos;
      leaf->tokens.assign(tokens.begin() + pos, tokens.begin() + target);
      leaf->parent = node;
      Node* l = leaf.get();
      node->children.emplace(tokens[size_t(pos)], std::move(leaf));
      ++stats_.nodes;
      path->push_back(l);
      return l;
    }
    Node* child = it->second.get();
    const int64_t span = std::min<int64_t>(int64_t(child->tokens.size()), target - pos);
    int64_t same = 0;
    while (same < span && child->tokens[size_t(same)] == tokens[size_t(pos + same)]) ++same;
    if (same < int64_t(child->tokens.size())) child = split(child, same);
    path->push_back(child);
    node = child;
    pos += same;
  }
  return node;
}

PrefixMatch PrefixTree::match(std::span<const int32_t> prompt, bool record) {
  if (record) {
    ++stats_.lookups;
    ++clock_;
  }
  const int64_t limit = int64_t(prompt.size()) - 1;
  std::vector<Node*> path;
  Node* best = nullptr;
  size_t best_depth = 0;
  Node* node = root_.get();
  int64_t pos = 0;
  while (pos < limit) {
    auto it = node->children.find(prompt[size_t(pos)]);
    if (it == node->children.end()) break;
    Node* child = it->second.get();
    const int64_t len = int64_t(child->tokens.size());
    if (pos + len > limit || !std::equal(child->tokens.begin(), child->tokens.end(), prompt.begin() + pos)) break;
    path.push_back(child);
    pos += len;
    node = child;
    if (child->point) {
      best = child;
      best_depth = path.size();
    }
  }
  PrefixMatch m;
  if (!best) return m;
  m.position = best->end();
  m.point = best->point;
  for (size_t i = 0; i < best_depth; ++i) {
    if (record) path[i]->last_used = clock_;
    for (const auto& [index, id] : path[i]->full_blocks) m.blocks.push_back(id);
  }
  if (best->partial_block) m.blocks.push_back(best->partial_block);
  if (!record) return m;
  ++stats_.hits;
  stats_.reused_tokens += m.position;
  return m;
}

InsertResult PrefixTree::insert(std::span<const int32_t> tokens, std::span<const int64_t> positions) {
  InsertResult r;
  ++clock_;
  const int64_t n_tokens = int64_t(tokens.size());
  const int64_t bt = options_.block_tokens;
  int64_t prev = 0;
  for (const int64_t target : positions) {
    V4RT_REQUIRE(target > prev && target <= n_tokens,
                 "prefix point " << target << " must be increasing and in [1, " << n_tokens << "]");
    prev = target;
    std::vector<Node*> path;
    Node* node = descend(tokens, target, &path);
    for (Node* p : path) {
      p->last_used = clock_;
      for (int64_t k = p->begin / bt; (k + 1) * bt <= p->end(); ++k) {  // full blocks ending in (begin, end]
        if ((k + 1) * bt <= p->begin || p->full_blocks.count(k)) continue;
        const PrefixId id = next_id();
        const int64_t b = options_.block_bytes(k * bt, (k + 1) * bt);
        p->full_blocks.emplace(k, id);
        p->bytes += b;
        stats_.bytes += b;
        ++stats_.blocks;
        r.blocks.push_back({id, k, (k + 1) * bt});
      }
    }
    if (node->point) continue;
    node->point = next_id();
    points_.emplace(node->point, node);
    const int64_t pb = options_.point_bytes(target);
    node->bytes += pb;
    stats_.bytes += pb;
    ++stats_.points;
    r.points.push_back({node->point, target});
    if (target % bt != 0) {  // the point's own partial block: never shared with a later point
      node->partial_block = next_id();
      const int64_t b = options_.block_bytes(target / bt * bt, target);
      node->bytes += b;
      stats_.bytes += b;
      ++stats_.blocks;
      r.blocks.push_back({node->partial_block, target / bt, target});
    }
  }
  if (options_.budget_bytes > 0 && stats_.bytes > options_.budget_bytes) r.freed = evict(stats_.bytes - options_.budget_bytes);
  return r;
}

void PrefixTree::pin(PrefixId point) {
  auto it = points_.find(point);
  CHECK(it != points_.end()) << "pin of unknown prefix point " << point;
  ++it->second->pins;
}

void PrefixTree::unpin(PrefixId point) {
  auto it = points_.find(point);
  CHECK(it != points_.end() && it->second->pins > 0) << "unpin of prefix point " << point << " that is not pinned";
  --it->second->pins;
}

// Removes a childless node with its point and blocks.
void PrefixTree::remove_leaf(Node* node, std::vector<PrefixId>* freed) {
  CHECK(node->children.empty() && node->pins == 0 && node != root_.get()) << "removing a node that is not a free leaf";
  if (node->point) {
    freed->push_back(node->point);
    points_.erase(node->point);
    --stats_.points;
    ++stats_.evicted_points;
  }
  if (node->partial_block) {
    freed->push_back(node->partial_block);
    --stats_.blocks;
  }
  for (const auto& [index, id] : node->full_blocks) {
    freed->push_back(id);
    --stats_.blocks;
  }
  stats_.bytes -= node->bytes;
  stats_.evicted_bytes += node->bytes;
  --stats_.nodes;
  node->parent->children.erase(node->tokens.front());
}

std::vector<PrefixId> PrefixTree::evict(int64_t bytes) {
  std::vector<PrefixId> freed;
  const int64_t target = stats_.bytes - bytes;
  while (stats_.bytes > target) {
    Node* victim = nullptr;  // the least recently used free leaf, oldest node first on ties
    std::vector<Node*> stack = {root_.get()};
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (auto& [tok, child] : n->children) stack.push_back(child.get());
      if (n == root_.get() || !n->children.empty() || n->pins > 0) continue;
      if (!victim || n->last_used < victim->last_used || (n->last_used == victim->last_used && n->id < victim->id))
        victim = n;
    }
    if (!victim) break;
    Node* parent = victim->parent;
    remove_leaf(victim, &freed);
    // A parent left without children and without a point resumes nothing: it goes too.
    while (parent != root_.get() && parent->children.empty() && !parent->point && parent->pins == 0) {
      Node* up = parent->parent;
      remove_leaf(parent, &freed);
      parent = up;
    }
  }
  return freed;
}

std::vector<int64_t> PrefixTree::plan_points(int64_t prompt_tokens, int64_t from, std::span<const int64_t> boundaries,
                                             int64_t every_n) {
  const int64_t last = prompt_tokens - 1;
  std::vector<int64_t> out;
  if (every_n > 0)
    for (int64_t p = (from / every_n + 1) * every_n; p <= last; p += every_n) out.push_back(p);
  for (int64_t b : boundaries)
    if (b > from && b <= last) out.push_back(b);
  if (last > from) out.push_back(last);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void InFlightPoints::add(uint64_t seq, std::span<const int32_t> tokens, std::span<const int64_t> positions) {
  Plan p;
  p.tokens.assign(tokens.begin(), tokens.end());
  p.positions.assign(positions.begin(), positions.end());
  plans_[seq] = std::move(p);
}

void InFlightPoints::remove(uint64_t seq) { plans_.erase(seq); }

int64_t InFlightPoints::longest(std::span<const int32_t> prompt, int64_t matched, uint64_t* seq) const {
  int64_t best = 0;
  for (const auto& [id, plan] : plans_) {
    const size_t n = std::min(plan.tokens.size(), prompt.size());
    const int64_t common = std::mismatch(plan.tokens.begin(), plan.tokens.begin() + int64_t(n), prompt.begin()).first -
                           plan.tokens.begin();
    for (int64_t p : plan.positions) {
      if (p > common || p > int64_t(prompt.size()) - 1) break;
      if (p > matched && p > best) {
        best = p;
        if (seq) *seq = id;
      }
    }
  }
  return best;
}

}  // namespace v4rt::runtime
