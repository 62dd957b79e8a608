// SPDX-License-Identifier: MIT
// The prefix tree and one rank's store driving the tiny model the way a scheduler will: match,
// resume from the stored point, prefill in chunks that end at the planned points (a tail snapshot
// at each), insert, store. Every request's last-token logits equal a full recompute bit for bit;
// the tokens computed are the prompt minus the match; the tree's byte count equals the payload
// bytes the store holds, through evictions.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "model/presets.h"
#include "runtime/prefix_store.h"
#include "runtime/prefix_tree.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::runtime {
namespace {

using model::testing::LoadedModel;
using model::testing::step_logits;
using model::testing::test_prompt;
using model::testing::tiny_config;

constexpr int64_t kVocab = 512;
constexpr int64_t kBlockTokens = 128;

LoadedModel& loaded() {
  static LoadedModel* m = new LoadedModel(tiny_config(kVocab), 11);
  return *m;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A scheduler in miniature over one rank.
class Server {
 public:
  Server(int64_t every_n, int64_t budget) : store_(*loaded().model, kBlockTokens) {
    PrefixTreeOptions o;
    o.block_tokens = kBlockTokens;
    o.budget_bytes = budget;
    set_model_byte_sizes(o, loaded().model->config(), model::EntryOwnership{});
    tree_ = std::make_unique<PrefixTree>(o);
    every_n_ = every_n;
  }

  // Returns the last prompt token's logits; *cached receives the tokens taken from the cache.
  std::vector<float> request(const std::vector<int32_t>& prompt, const std::vector<int64_t>& boundaries,
                             int64_t* cached) {
    model::Model& m = *loaded().model;
    const PrefixMatch match = tree_->match(prompt);
    std::unique_ptr<model::SequenceState> seq = match.position > 0 ? store_.resume(match) : m.new_sequence();
    if (match.point) tree_->pin(match.point);
    *cached = match.position;
    computed_ += int64_t(prompt.size()) - match.position;
    const std::vector<int64_t> points = PrefixTree::plan_points(int64_t(prompt.size()), match.position, boundaries, every_n_);
    std::map<int64_t, model::TailSnapshot> snaps;
    int64_t pos = match.position;
    std::vector<float> logits;
    for (int64_t cut : points) {  // prefill chunks end at the points
      step_logits(m, *seq, std::vector<int32_t>(prompt.begin() + pos, prompt.begin() + cut));
      snaps.emplace(cut, model::snapshot_tail(*seq));
      pos = cut;
    }
    logits = step_logits(m, *seq, std::vector<int32_t>(prompt.begin() + pos, prompt.end()));
    const InsertResult ins = tree_->insert(prompt, points);
    store_.apply(ins, snaps, *seq);
    if (match.point && !contains(ins.freed, match.point)) tree_->unpin(match.point);
    check_accounting();
    return logits;
  }

  void check_accounting() const {
    EXPECT_EQ(store_.bytes(), tree_->bytes()) << "tree charges what the store holds (one rank)";
    EXPECT_EQ(int64_t(store_.num_points()), tree_->stats().points);
    EXPECT_EQ(int64_t(store_.num_blocks()), tree_->stats().blocks);
  }

  PrefixTree& tree() { return *tree_; }
  int64_t computed() const { return computed_; }

 private:
  static bool contains(const std::vector<PrefixId>& v, PrefixId id) {
    for (PrefixId x : v)
      if (x == id) return true;
    return false;
  }
  PrefixStore store_;
  std::unique_ptr<PrefixTree> tree_;
  int64_t every_n_ = 0;
  int64_t computed_ = 0;
};

std::vector<float> full_recompute(const std::vector<int32_t>& prompt) {
  model::Model& m = *loaded().model;
  auto seq = m.new_sequence();
  return step_logits(m, *seq, prompt);
}

void expect_bit_equal(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << what << ": logits differ";
}

TEST(PrefixResume, SharedSystemPromptResentPromptNextTurnAndEveryN) {
  Server server(/*every_n=*/64, /*budget=*/0);
  const std::vector<int32_t> system = test_prompt(kVocab, 150, 1);  // ends mid CSA and HCA block
  const std::vector<int32_t> u1 = test_prompt(kVocab, 45, 2), u2 = test_prompt(kVocab, 38, 3);
  int64_t cached = 0;

  const std::vector<int32_t> first = cat({system, u1});
  expect_bit_equal(server.request(first, {150}, &cached), full_recompute(first), "first user");
  EXPECT_EQ(cached, 0);

  const std::vector<int32_t> second = cat({system, u2});
  expect_bit_equal(server.request(second, {150}, &cached), full_recompute(second), "second user, same system prompt");
  EXPECT_EQ(cached, 150) << "the message boundary at the end of the system prompt";

  expect_bit_equal(server.request(first, {150}, &cached), full_recompute(first), "same prompt again");
  EXPECT_EQ(cached, int64_t(first.size()) - 1) << "the prompt point";

  // The next turn extends the first prompt (its assistant reply, a new user message).
  const std::vector<int32_t> turn = cat({first, test_prompt(kVocab, 30, 4), test_prompt(kVocab, 20, 5)});
  expect_bit_equal(server.request(turn, {150, int64_t(first.size())}, &cached), full_recompute(turn), "next turn");
  EXPECT_EQ(cached, int64_t(first.size()) - 1);

  // A long prompt, then one sharing its first 210 tokens: resumes at the every-64 point 192.
  const std::vector<int32_t> long_prompt = test_prompt(kVocab, 300, 6);
  expect_bit_equal(server.request(long_prompt, {}, &cached), full_recompute(long_prompt), "long prompt");
  std::vector<int32_t> fork(long_prompt.begin(), long_prompt.begin() + 210);
  const std::vector<int32_t> tail = test_prompt(kVocab, 25, 7);
  fork.insert(fork.end(), tail.begin(), tail.end());
  expect_bit_equal(server.request(fork, {}, &cached), full_recompute(fork), "fork of the long prompt");
  EXPECT_EQ(cached, 192);

  const PrefixTreeStats& s = server.tree().stats();
  EXPECT_EQ(s.lookups, 6);
  EXPECT_EQ(s.hits, 4);
  EXPECT_EQ(s.reused_tokens, 150 + int64_t(first.size()) - 1 + int64_t(first.size()) - 1 + 192);
}

TEST(PrefixResume, TwentyRequestsComputeTheSharedPrefixOnceUnderABudget) {
  // The budget holds the system prompt's points and blocks and a few requests' more.
  const model::ModelConfig& cfg = loaded().model->config();
  const int64_t per_request = model::tail_snapshot_bytes(cfg, 190) + model::entry_block_bytes(cfg, {}, 128, 190);
  Server server(/*every_n=*/0, /*budget=*/4 * per_request);
  const std::vector<int32_t> system = test_prompt(kVocab, 140, 8);
  int64_t cached_total = 0;
  for (int r = 0; r < 20; ++r) {
    const std::vector<int32_t> prompt = cat({system, test_prompt(kVocab, 50, 100 + uint32_t(r))});
    int64_t cached = 0;
    const std::vector<float> got = server.request(prompt, {140}, &cached);
    if (r % 5 == 0) expect_bit_equal(got, full_recompute(prompt), "request under eviction");
    cached_total += cached;
  }
  EXPECT_EQ(server.computed(), 140 + 20 * 50) << "each system prompt token computed once";
  EXPECT_EQ(cached_total, 19 * 140);
  EXPECT_GT(server.tree().stats().evicted_points, 0) << "the budget forced evictions";
  EXPECT_LE(server.tree().bytes(), 4 * per_request);
}

}  // namespace
}  // namespace v4rt::runtime
