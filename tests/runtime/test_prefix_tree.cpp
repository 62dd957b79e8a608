// SPDX-License-Identifier: MIT
// The prefix cache's radix tree (runtime/prefix_tree.h) alone, with made-up byte sizes: longest
// match, splits, partial-block copy on write, byte accounting, LRU eviction of leaves, pins, the
// budget, determinism, point planning, and a 100-request shared-prefix workload.
#include "runtime/prefix_tree.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "common/check.h"

namespace v4rt::runtime {
namespace {

constexpr int64_t kPointBytes = 1000;
constexpr int64_t kBytesPerBlockToken = 10;

PrefixTreeOptions options(int64_t block_tokens = 8, int64_t budget = 0) {
  PrefixTreeOptions o;
  o.block_tokens = block_tokens;
  o.budget_bytes = budget;
  o.point_bytes = [](int64_t) { return kPointBytes; };
  o.block_bytes = [](int64_t begin, int64_t end) { return (end - begin) * kBytesPerBlockToken; };
  return o;
}

// Tokens salt*1000 + i: prompts with different salts share nothing.
std::vector<int32_t> tokens(int n, int salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[size_t(i)] = salt * 1000 + i;
  return t;
}

std::vector<int32_t> head(const std::vector<int32_t>& t, size_t n) { return {t.begin(), t.begin() + int64_t(n)}; }

std::vector<int32_t> plus(std::vector<int32_t> t, std::vector<int32_t> more) {
  t.insert(t.end(), more.begin(), more.end());
  return t;
}

InsertResult insert(PrefixTree& tree, const std::vector<int32_t>& t, std::vector<int64_t> points) {
  return tree.insert(t, points);
}

TEST(PrefixTree, LongestMatchLeavesOneTokenToCompute) {
  PrefixTree tree(options());
  const std::vector<int32_t> a = tokens(20, 1);
  const InsertResult r = insert(tree, a, {8, 12, 20});
  ASSERT_EQ(r.points.size(), 3u);
  // Blocks of 8 tokens: full 0 (ends 8) and 1 (ends 16); partial [8, 12) for the point at 12 and
  // [16, 20) for the point at 20.
  ASSERT_EQ(r.blocks.size(), 4u);
  EXPECT_EQ(tree.match(plus(a, {7})).position, 20);
  EXPECT_EQ(tree.match(a).position, 12) << "the point at 20 leaves no token of this prompt to compute";
  EXPECT_EQ(tree.match(plus(head(a, 15), {5})).position, 12);
  EXPECT_EQ(tree.match(head(a, 10)).position, 8);
  EXPECT_EQ(tree.match(head(a, 8)).position, 0);
  EXPECT_EQ(tree.match(tokens(30, 2)).position, 0);
  const PrefixMatch m20 = tree.match(plus(a, {7}));
  EXPECT_EQ(m20.point, r.points[2].id);
  ASSERT_EQ(m20.blocks.size(), 3u);  // full 0, full 1, partial [16, 20)
  std::map<PrefixId, int64_t> end_of;
  for (const BlockSpec& b : r.blocks) end_of[b.id] = b.end;
  EXPECT_EQ(end_of[m20.blocks[0]], 8);
  EXPECT_EQ(end_of[m20.blocks[1]], 16);
  EXPECT_EQ(end_of[m20.blocks[2]], 20);
  const PrefixMatch m12 = tree.match(plus(head(a, 12), {9}));
  ASSERT_EQ(m12.blocks.size(), 2u);  // full 0, partial [8, 12)
  EXPECT_EQ(m12.blocks[0], m20.blocks[0]) << "the full block is shared";
  EXPECT_EQ(tree.stats().lookups, 8);
  EXPECT_EQ(tree.stats().hits, 6);
  EXPECT_EQ(tree.stats().reused_tokens, 20 + 12 + 12 + 8 + 20 + 12);
  // Inserting the same points again adds nothing.
  const InsertResult again = insert(tree, a, {8, 12, 20});
  EXPECT_TRUE(again.points.empty() && again.blocks.empty());
}

TEST(PrefixTree, BranchesSplitNodesAndKeepEachPathsBlocks) {
  PrefixTree tree(options());
  const std::vector<int32_t> a = tokens(20, 1);
  const InsertResult ra = insert(tree, a, {12, 20});
  const PrefixMatch before = tree.match(plus(a, {1}));
  std::vector<int32_t> b = head(a, 10);  // shares 10 tokens, then diverges
  for (int i = 0; i < 10; ++i) b.push_back(5000 + i);
  const InsertResult rb = insert(tree, b, {20});
  ASSERT_EQ(rb.points.size(), 1u);
  // b's full block 1 ([8, 16)) differs from a's; block 0 is shared and not created again.
  ASSERT_EQ(rb.blocks.size(), 2u);
  EXPECT_EQ(rb.blocks[0].index, 1);
  EXPECT_EQ(rb.blocks[1].end, 20);
  const PrefixMatch mb = tree.match(plus(b, {1}));
  EXPECT_EQ(mb.position, 20);
  ASSERT_EQ(mb.blocks.size(), 3u);
  EXPECT_EQ(mb.blocks[0], before.blocks[0]);
  EXPECT_NE(mb.blocks[1], before.blocks[1]);
  const PrefixMatch after = tree.match(plus(a, {1}));
  EXPECT_EQ(after.point, before.point);
  EXPECT_EQ(after.blocks, before.blocks) << "splitting a's node keeps a's ids";
  EXPECT_EQ(tree.match(plus(head(a, 12), {1})).position, 12);
  EXPECT_EQ(tree.match(plus(head(a, 11), {1})).position, 0) << "no point at the split itself";
  (void)ra;
}

TEST(PrefixTree, PartialBlockIsCopiedOnWrite) {
  PrefixTree tree(options());
  const std::vector<int32_t> a = tokens(8, 1);
  const InsertResult r3 = insert(tree, head(a, 3), {3});
  ASSERT_EQ(r3.blocks.size(), 1u);
  const PrefixId x = r3.blocks[0].id;
  EXPECT_EQ(r3.blocks[0].end, 3);
  // A point further into the same block gets its own block [0, 5), extracted anew; x is untouched.
  const InsertResult r5 = insert(tree, head(a, 5), {5});
  ASSERT_EQ(r5.blocks.size(), 1u);
  const PrefixId y = r5.blocks[0].id;
  EXPECT_NE(x, y);
  EXPECT_EQ(r5.blocks[0].index, 0);
  EXPECT_EQ(r5.blocks[0].end, 5);
  EXPECT_EQ(tree.match(head(a, 4)).blocks, std::vector<PrefixId>{x});
  EXPECT_EQ(tree.match(head(a, 6)).blocks, std::vector<PrefixId>{y});
  // Filling the block makes a third, full block; the partial ones stay with their points.
  const InsertResult r8 = insert(tree, a, {8});
  ASSERT_EQ(r8.blocks.size(), 1u);
  EXPECT_EQ(r8.blocks[0].end, 8);
  EXPECT_EQ(tree.stats().blocks, 3);
  EXPECT_EQ(tree.bytes(), 3 * kPointBytes + (3 + 5 + 8) * kBytesPerBlockToken);
  // Evicting the point at 8 (a leaf) frees its full block; x and y stay.
  tree.match(head(a, 4));
  tree.match(head(a, 6));
  const std::vector<PrefixId> freed = tree.evict(1);
  EXPECT_EQ(std::set<PrefixId>(freed.begin(), freed.end()), (std::set<PrefixId>{r8.points[0].id, r8.blocks[0].id}));
  EXPECT_EQ(tree.match(head(a, 6)).blocks, std::vector<PrefixId>{y});
}

TEST(PrefixTree, BytesFollowInsertsSplitsAndEvictions) {
  PrefixTree tree(options());
  insert(tree, tokens(20, 1), {8, 20});       // 2 points, blocks [0,8) [8,16) [16,20)
  EXPECT_EQ(tree.bytes(), 2 * kPointBytes + 20 * kBytesPerBlockToken);
  std::vector<int32_t> b = head(tokens(20, 1), 12);
  for (int i = 0; i < 12; ++i) b.push_back(7000 + i);
  insert(tree, b, {24});                      // splits at 12; blocks [8,16)' [16,24)
  EXPECT_EQ(tree.bytes(), 3 * kPointBytes + (20 + 16) * kBytesPerBlockToken);
  EXPECT_EQ(tree.stats().points, 3);
  EXPECT_EQ(tree.stats().blocks, 5);
  EXPECT_EQ(tree.stats().nodes, 4);  // [0,8) [8,12) [12,20) [12,24)
  tree.evict(int64_t(1) << 40);
  EXPECT_EQ(tree.bytes(), 0);
  EXPECT_EQ(tree.stats().points, 0);
  EXPECT_EQ(tree.stats().blocks, 0);
  EXPECT_EQ(tree.stats().nodes, 0);
  EXPECT_EQ(tree.stats().evicted_points, 3);
  EXPECT_EQ(tree.stats().evicted_bytes, 3 * kPointBytes + 36 * kBytesPerBlockToken);
}

TEST(PrefixTree, EvictsLeastRecentlyUsedLeavesFirst) {
  PrefixTree tree(options());
  std::vector<PrefixId> point(4);
  for (int s = 1; s <= 3; ++s) point[size_t(s)] = insert(tree, tokens(6, s), {6}).points[0].id;
  tree.match(plus(tokens(6, 1), {0}));  // 1 becomes the most recent; 2 is now the oldest
  auto evicted_point = [&] {
    const std::vector<PrefixId> f = tree.evict(1);
    for (PrefixId id : f)
      for (int s = 1; s <= 3; ++s)
        if (id == point[size_t(s)]) return s;
    return 0;
  };
  EXPECT_EQ(evicted_point(), 2);
  EXPECT_EQ(evicted_point(), 3);
  EXPECT_EQ(evicted_point(), 1);
  EXPECT_EQ(evicted_point(), 0);
  // An inner point is evicted only once its subtree is gone: the leaf first, then the inner one.
  const std::vector<int32_t> a = tokens(16, 4);
  const InsertResult r = insert(tree, a, {4, 16});
  tree.match(plus(head(a, 4), {1}));  // the inner point is more recent, but it is not a leaf
  EXPECT_EQ(tree.evict(1).front(), r.points[1].id);
  EXPECT_EQ(tree.evict(1).front(), r.points[0].id);
}

TEST(PrefixTree, PinnedNodesAreNeverEvicted) {
  PrefixTree tree(options());
  const InsertResult r1 = insert(tree, tokens(10, 1), {10});
  insert(tree, tokens(10, 2), {10});
  const std::vector<int32_t> inner = tokens(20, 3);
  const InsertResult r3 = insert(tree, inner, {5, 20});
  tree.pin(r1.points[0].id);
  tree.pin(r3.points[0].id);  // an inner point: its descendants may go, it may not
  tree.evict(int64_t(1) << 40);
  EXPECT_EQ(tree.stats().points, 2);
  EXPECT_EQ(tree.match(plus(tokens(10, 1), {0})).position, 10);
  EXPECT_EQ(tree.match(inner).position, 5);
  tree.unpin(r1.points[0].id);
  tree.unpin(r3.points[0].id);
  tree.evict(int64_t(1) << 40);
  EXPECT_EQ(tree.stats().points, 0);
  EXPECT_DEATH(tree.unpin(r1.points[0].id), "not pinned");
}

TEST(PrefixTree, InsertEvictsDownToTheBudget) {
  // Each prompt: one point (1000) + 6 block tokens (60) = 1060 bytes; the budget holds two.
  PrefixTree tree(options(8, 2200));
  const InsertResult r1 = insert(tree, tokens(6, 1), {6});
  insert(tree, tokens(6, 2), {6});
  EXPECT_TRUE(insert(tree, tokens(6, 2), {6}).freed.empty());
  const InsertResult r3 = insert(tree, tokens(6, 3), {6});
  EXPECT_EQ(std::set<PrefixId>(r3.freed.begin(), r3.freed.end()),
            (std::set<PrefixId>{r1.points[0].id, r1.blocks[0].id}));
  EXPECT_LE(tree.bytes(), 2200);
  EXPECT_EQ(tree.match(plus(tokens(6, 1), {0})).position, 0);
  EXPECT_EQ(tree.match(plus(tokens(6, 3), {0})).position, 6);
}

TEST(PrefixTree, SameCallsGiveSameDecisions) {
  auto run = [] {
    PrefixTree tree(options(8, 5000));
    std::vector<int64_t> trace;
    for (int r = 0; r < 40; ++r) {
      std::vector<int32_t> t = head(tokens(30, r % 3), size_t(10 + r % 17));
      for (int i = 0; i < r % 5; ++i) t.push_back(900 + r);
      const PrefixMatch m = tree.match(t);
      trace.push_back(m.position);
      trace.push_back(int64_t(m.point));
      const InsertResult ins = tree.insert(t, PrefixTree::plan_points(int64_t(t.size()), m.position, {}, 8));
      for (const PointSpec& p : ins.points) trace.push_back(int64_t(p.id));
      for (PrefixId id : ins.freed) trace.push_back(-int64_t(id));
    }
    return trace;
  };
  EXPECT_EQ(run(), run());
}

TEST(PrefixTree, PlanPoints) {
  const std::vector<int64_t> boundaries = {5, 300, 1000, 1400};
  EXPECT_EQ(PrefixTree::plan_points(1200, 0, boundaries, 256), (std::vector<int64_t>{5, 256, 300, 512, 768, 1000, 1024, 1199}));
  EXPECT_EQ(PrefixTree::plan_points(1200, 768, boundaries, 256), (std::vector<int64_t>{1000, 1024, 1199}));
  EXPECT_EQ(PrefixTree::plan_points(1200, 1199, boundaries, 256), (std::vector<int64_t>{}));
  EXPECT_EQ(PrefixTree::plan_points(10, 0, {}, 0), (std::vector<int64_t>{9}));
}

// The tokens a scheduler computes for each request: the prompt minus what the tree gives back.
struct Workload {
  int64_t computed = 0;
  int64_t prefix_computed = 0;  // of those, tokens inside the shared prefix
};
Workload run_shared_prefix(PrefixTree& tree, bool boundary_point, int num_requests) {
  constexpr int kPrefix = 1000, kSuffix = 50;
  const std::vector<int32_t> system = tokens(kPrefix, 1);
  Workload w;
  for (int r = 0; r < num_requests; ++r) {
    std::vector<int32_t> prompt = system;
    for (int i = 0; i < kSuffix; ++i) prompt.push_back(100000 + r * kSuffix + i);
    const PrefixMatch m = tree.match(prompt);
    w.computed += int64_t(prompt.size()) - m.position;
    w.prefix_computed += std::max<int64_t>(0, kPrefix - m.position);
    std::vector<int64_t> boundaries;
    if (boundary_point) boundaries.push_back(kPrefix);  // the end of the system message
    tree.insert(prompt, PrefixTree::plan_points(int64_t(prompt.size()), m.position, boundaries, 256));
  }
  return w;
}

TEST(PrefixTree, HundredRequestsComputeTheSharedPrefixOnce) {
  PrefixTree tree(options(256));
  const Workload w = run_shared_prefix(tree, /*boundary_point=*/true, 100);
  EXPECT_EQ(w.prefix_computed, 1000);
  EXPECT_EQ(w.computed, 1000 + 100 * 50);
  EXPECT_EQ(tree.stats().hits, 99);
  EXPECT_EQ(tree.stats().reused_tokens, 99 * 1000);
  // Without the boundary point the requests resume at the last every-256 point (768) and compute
  // the rest of the prefix again.
  PrefixTree plain(options(256));
  const Workload p = run_shared_prefix(plain, /*boundary_point=*/false, 100);
  EXPECT_EQ(p.prefix_computed, 1000 + 99 * 232);
}

// 100 requests arriving together with a shared 1,000-token system prompt, through a scheduler in
// miniature: each step admits every waiting request it can and runs one chunk per running request
// (at most 256 tokens, ending at its next point, which is inserted right after). With
// InFlightPoints a request waits for a shared point another request is computing; without, every
// request computes the prefix itself. Returns the tokens computed.
int64_t simulate_batch(bool share, PrefixTree& tree) {
  constexpr int kRequests = 100, kPrefix = 1000, kSuffix = 50;
  struct Req {
    std::vector<int32_t> prompt;
    int64_t pos = -1;  // -1: waiting
    std::vector<int64_t> points;
    size_t next = 0;
    bool done = false;
  };
  std::vector<Req> reqs(kRequests);
  for (int r = 0; r < kRequests; ++r) {
    reqs[size_t(r)].prompt = tokens(kPrefix, 1);
    for (int i = 0; i < kSuffix; ++i) reqs[size_t(r)].prompt.push_back(100000 + r * kSuffix + i);
  }
  InFlightPoints inflight;
  const std::vector<int64_t> boundaries = {kPrefix};
  int64_t computed = 0;
  int finished = 0;
  for (int step = 0; step < 10000 && finished < kRequests; ++step) {
    for (size_t i = 0; i < reqs.size(); ++i) {
      Req& r = reqs[i];
      if (r.pos >= 0) continue;
      const PrefixMatch m = tree.match(r.prompt);
      uint64_t owner = 0;
      if (share && inflight.longest(r.prompt, m.position, &owner) > 0) continue;  // wait for that point
      r.pos = m.position;
      r.points = PrefixTree::plan_points(int64_t(r.prompt.size()), m.position, boundaries, 256);
      inflight.add(i + 1, r.prompt, r.points);
    }
    for (size_t i = 0; i < reqs.size(); ++i) {
      Req& r = reqs[i];
      if (r.pos < 0 || r.done) continue;
      int64_t end = std::min<int64_t>(int64_t(r.prompt.size()), r.pos + 256);
      if (r.next < r.points.size()) end = std::min(end, r.points[r.next]);
      computed += end - r.pos;
      r.pos = end;
      if (r.next < r.points.size() && r.pos == r.points[r.next]) {
        const std::vector<int64_t> point = {r.pos};
        tree.insert(std::span<const int32_t>(r.prompt.data(), size_t(r.pos)), point);
        ++r.next;
      }
      if (r.pos == int64_t(r.prompt.size())) {
        r.done = true;
        ++finished;
        inflight.remove(i + 1);
      }
    }
  }
  EXPECT_EQ(finished, kRequests);
  EXPECT_EQ(inflight.size(), 0u);
  return computed;
}

TEST(PrefixTree, BatchSubmittedAtOnceComputesTheSharedPrefixOnce) {
  PrefixTree shared_tree(options(256));
  EXPECT_EQ(simulate_batch(/*share=*/true, shared_tree), 1000 + 100 * 50);
  PrefixTree plain_tree(options(256));
  EXPECT_EQ(simulate_batch(/*share=*/false, plain_tree), 100 * 1050) << "all admitted before any point exists";
}

TEST(PrefixTree, InFlightPointsLongest) {
  InFlightPoints f;
  const std::vector<int32_t> a = tokens(20, 1);
  f.add(7, a, std::vector<int64_t>{4, 8, 12, 19});
  uint64_t owner = 0;
  EXPECT_EQ(f.longest(plus(head(a, 10), {5}), 0, &owner), 8);
  EXPECT_EQ(owner, 7u);
  EXPECT_EQ(f.longest(plus(head(a, 10), {5}), 8, &owner), 0) << "nothing beyond the tree's match";
  EXPECT_EQ(f.longest(head(a, 12), 0, &owner), 8) << "a point at the prompt's end leaves no token";
  EXPECT_EQ(f.longest(tokens(20, 2), 0, &owner), 0);
  f.remove(7);
  EXPECT_EQ(f.longest(a, 0, &owner), 0);
}

TEST(PrefixTree, SamePromptAgainComputesOneToken) {
  PrefixTree tree(options(256));
  const std::vector<int32_t> prompt = tokens(1409, 1);
  tree.insert(prompt, PrefixTree::plan_points(int64_t(prompt.size()), 0, {}, 256));
  EXPECT_EQ(tree.match(prompt).position, 1408);
}

TEST(PrefixTree, RejectsBadPoints) {
  PrefixTree tree(options());
  EXPECT_THROW(insert(tree, tokens(5, 1), {6}), v4rt::Error);
  EXPECT_THROW(insert(tree, tokens(5, 1), {3, 3}), v4rt::Error);
  EXPECT_THROW(insert(tree, tokens(5, 1), {0}), v4rt::Error);
}

}  // namespace
}  // namespace v4rt::runtime
