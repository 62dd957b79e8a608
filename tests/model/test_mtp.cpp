// SPDX-License-Identifier: MIT
// MTP block and speculative decoding on a tiny synthetic checkpoint with an MTP block (small
// vocabulary so the tests run in seconds): loading, the block's chunk invariance, exact rollback of
// the main model's and the block's state after a rejected draft (logits bit-identical to a fresh
// run on the CPU backend), and greedy speculative output equal to plain greedy output token for
// token at draft depths 1, 2 and 3; a cloned speculative sequence continues bit for bit as the
// original. Acceptance rates are printed.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/speculative.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::model {
namespace {

using testing::LoadedModel;
using testing::step_logits;
using testing::test_prompt;

class MtpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { lm_ = new LoadedModel(testing::tiny_mtp_config(/*vocab_size=*/512)); }
  static void TearDownTestSuite() {
    delete lm_;
    lm_ = nullptr;
  }
  Model& model() { return *lm_->model; }
  Mtp& mtp() { return *lm_->mtp; }

  // The main model's final residual streams [n, hc, D] after each token of `prompt`, one chunk.
  struct Streams {
    Buffer buffer;
    TensorView view;
  };
  Streams prompt_streams(std::span<const int32_t> prompt) {
    const ModelConfig& cfg = model().config();
    const int64_t n = int64_t(prompt.size());
    Streams st;
    st.buffer = model().backend().alloc(size_t(n * cfg.hc_mult * cfg.hidden_size) * 4);
    st.view = TensorView(st.buffer.data(), DType::kF32, {n, cfg.hc_mult, cfg.hidden_size}, model().backend().device());
    auto seq = model().new_sequence();
    StepChunk c;
    c.sequence = seq.get();
    c.tokens = prompt;
    c.hidden = st.view;
    model().step(std::span<const StepChunk>(&c, 1), nullptr);
    return st;
  }
  static LoadedModel* lm_;
};
LoadedModel* MtpTest::lm_ = nullptr;

TEST_F(MtpTest, RefusedWithoutMtpBlock) {
  ModelConfig c = testing::tiny_mtp_config(512);
  c.num_nextn_predict_layers = 0;
  c.compress_ratios.pop_back();
  LoadedModel plain(c);
  testing::expect_error_naming([&] { Mtp::load(*plain.ckpt, *plain.model); }, {"no MTP block", "num_nextn_predict_layers"});
}

// The block over a chunk of pairs gives what it gives one pair at a time (window state carried).
TEST_F(MtpTest, BlockChunkEqualsOneByOne) {
  const ModelConfig& cfg = model().config();
  const std::vector<int32_t> prompt = test_prompt(cfg.vocab_size, 9, 1);
  const int64_t n = int64_t(prompt.size());
  const Streams streams = prompt_streams(prompt);
  const TensorView& hv = streams.view;
  const std::vector<int32_t> next(prompt.begin() + 1, prompt.end());  // pairs for positions 0..n-2
  auto chunked = mtp().new_state();
  std::vector<float> a;
  mtp().forward(*chunked, kernels::view_rows(hv, 0, n - 1), next, &a);
  auto single = mtp().new_state();
  std::vector<float> b;
  for (int64_t i = 0; i < n - 1; ++i)
    mtp().forward(*single, kernels::view_rows(hv, i, i + 1), std::span<const int32_t>(&next[size_t(i)], 1), &b);
  ASSERT_EQ(a.size(), size_t(cfg.vocab_size));
  EXPECT_EQ(a, b);
  EXPECT_EQ(chunked->position(), n - 1);
  for (float v : a) ASSERT_TRUE(std::isfinite(v));
}

// Main-model rollback: append a 4-token chunk after `len` tokens, roll back to keep `keep` of it,
// append 2 more; the logits equal those of a fresh sequence that never saw the rejected tokens.
// Lengths put the chunk across CSA (every 4) and HCA (128) entry boundaries, so compressed
// entries are retracted.
TEST_F(MtpTest, RollbackEqualsFreshRun) {
  const ModelConfig& cfg = model().config();
  const std::vector<int32_t> all = test_prompt(cfg.vocab_size, 140, 7);
  int checked = 0;
  for (int len : {1, 5, 6, 7, 8, 124, 125, 126, 127}) {
    for (int keep : {1, 2, 3, 4}) {
      const std::vector<int32_t> prompt(all.begin(), all.begin() + len);
      const std::vector<int32_t> chunk(all.begin() + len, all.begin() + len + 4);
      std::vector<int32_t> rejected = chunk;  // the rejected tail differs from what follows
      for (int i = keep; i < 4; ++i) rejected[size_t(i)] = int32_t((rejected[size_t(i)] + 17) % cfg.vocab_size);
      const std::vector<int32_t> kept(chunk.begin(), chunk.begin() + keep);
      const std::vector<int32_t> after = {all[size_t(len + keep)], all[size_t(len + keep + 1)]};

      auto spec = model().new_sequence();
      step_logits(model(), *spec, prompt);
      spec->mark(4);
      step_logits(model(), *spec, rejected, true);
      spec->rollback(len + keep);
      ASSERT_FALSE(spec->marked());
      ASSERT_EQ(spec->position(), len + keep);
      const std::vector<float> got = step_logits(model(), *spec, after, true);

      auto fresh = model().new_sequence();
      step_logits(model(), *fresh, prompt);
      step_logits(model(), *fresh, kept);
      const std::vector<float> want = step_logits(model(), *fresh, after, true);
      ASSERT_EQ(got, want) << "prompt " << len << ", kept " << keep;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 36);
}

// release() keeps everything; a later mark + rollback still works; reset() drops a mark.
TEST_F(MtpTest, ReleaseKeepsState) {
  const ModelConfig& cfg = model().config();
  const std::vector<int32_t> all = test_prompt(cfg.vocab_size, 20, 3);
  auto a = model().new_sequence();
  step_logits(model(), *a, {all.begin(), all.begin() + 6});
  a->mark(3);
  step_logits(model(), *a, {all.begin() + 6, all.begin() + 9});
  a->release();
  a->mark(2);
  step_logits(model(), *a, {all[9], 5});
  a->rollback(10);
  const std::vector<float> got = step_logits(model(), *a, {all[10]});
  auto b = model().new_sequence();
  const std::vector<float> want = step_logits(model(), *b, {all.begin(), all.begin() + 11});
  EXPECT_EQ(got, want);
  a->mark(1);
  a->reset();
  EXPECT_FALSE(a->marked());
  EXPECT_EQ(a->position(), 0);
}

// The MTP block's own window rolls back: drafting (chained positions) and rolling back, then
// feeding the true pairs, gives the logits of a state that never drafted.
TEST_F(MtpTest, MtpStateRollback) {
  const ModelConfig& cfg = model().config();
  const std::vector<int32_t> prompt = test_prompt(cfg.vocab_size, 6, 11);
  const Streams streams = prompt_streams(prompt);
  const TensorView& hv = streams.view;
  const std::vector<int32_t> next(prompt.begin() + 1, prompt.end());
  auto drafted = mtp().new_state();
  std::vector<float> a, b;
  mtp().forward(*drafted, kernels::view_rows(hv, 0, 3), {next.begin(), next.begin() + 3}, nullptr);
  drafted->mark(2);
  const int32_t junk[2] = {9, 10};
  mtp().forward(*drafted, kernels::view_rows(hv, 0, 2), junk, nullptr);
  drafted->rollback(3);
  mtp().forward(*drafted, kernels::view_rows(hv, 3, 5), {next.begin() + 3, next.end()}, &a);
  auto clean = mtp().new_state();
  mtp().forward(*clean, kernels::view_rows(hv, 0, 5), next, &b);
  EXPECT_EQ(a, b);
}

// SpeculativeSequence::clone over a cloned SequenceState (prefix reuse): after a prompt and a
// speculative step that kept one of two drafts, the copy drafts and verifies bit for bit as the
// original does.
TEST_F(MtpTest, SpeculativeSequenceCloneContinuesIdentically) {
  const ModelConfig& cfg = model().config();
  const std::vector<int32_t> prompt = test_prompt(cfg.vocab_size, 10, 21);
  auto seq = model().new_sequence();
  SpeculativeSequence spec(model(), mtp(), *seq);
  std::vector<std::vector<float>> lg;
  StepChunk c = spec.prompt_chunk(prompt, false);
  model().step(std::span<const StepChunk>(&c, 1), &lg);
  spec.after_prompt_chunk();
  const int32_t next = argmax(lg[0]);
  std::vector<float> q;
  spec.draft(1, 2, next, &q);
  const int32_t d1 = argmax(q);
  spec.draft(2, 2, d1, &q);
  const std::vector<int32_t> chunk = {next, d1, argmax(q)};
  c = spec.verify_chunk(chunk);
  model().step(std::span<const StepChunk>(&c, 1), &lg);
  spec.resolve(1);
  ASSERT_EQ(seq->position(), int64_t(prompt.size()) + 2);
  ASSERT_EQ(spec.num_pending(), 2);
  const int32_t after = int32_t((d1 + 5) % cfg.vocab_size);

  auto seq2 = seq->clone();
  auto spec2 = spec.clone(*seq2);
  // One depth-3 step on each; drafts are fixed tokens so both see the same inputs.
  auto run_step = [&](SpeculativeSequence& s) {
    std::vector<std::vector<float>> out;
    std::vector<float> ql;
    std::vector<int32_t> toks = {after};
    for (int level = 1; level <= 3; ++level) {
      s.draft(level, 3, toks.back(), &ql);
      out.push_back(ql);
      toks.push_back(int32_t((toks.back() * 7 + level) % cfg.vocab_size));
    }
    std::vector<std::vector<float>> vl;
    const StepChunk vc = s.verify_chunk(toks);
    model().step(std::span<const StepChunk>(&vc, 1), &vl);
    s.resolve(2);
    out.push_back(vl[0]);
    return out;
  };
  const std::vector<std::vector<float>> a = run_step(spec);
  const std::vector<std::vector<float>> b = run_step(*spec2);
  ASSERT_EQ(a.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << (i < 3 ? "draft level " : "verify ") << i + 1;
  EXPECT_EQ(seq->position(), seq2->position());
}

TEST_F(MtpTest, GreedySpeculativeEqualsGreedy) {
  const ModelConfig& cfg = model().config();
  constexpr int kTokens = 40;
  for (int depth : {1, 2, 3}) {
    SpeculativeStats total;
    for (uint32_t p = 0; p < 4; ++p) {
      const std::vector<int32_t> prompt = test_prompt(cfg.vocab_size, 3 + int(p) * 7, 100 + p);
      const std::vector<int32_t> want = testing::plain_greedy(model(), prompt, kTokens);
      SpeculativeOptions so;
      so.depth = depth;
      so.prefill_chunk = p == 3 ? 1 : 8;  // several prefill chunks: the MTP is fed across chunk edges
      SpeculativeDecoder dec(model(), mtp(), so);
      const std::vector<int32_t> got = dec.generate(prompt, kTokens);
      EXPECT_EQ(got, want) << "depth " << depth << ", prompt " << p;
      const SpeculativeStats& s = dec.stats();
      EXPECT_GE(s.tokens_per_step(), 1.0);
      EXPECT_LE(s.tokens_per_step(), depth + 1.0);
      total.steps += s.steps;
      total.drafted += s.drafted;
      total.accepted += s.accepted;
      total.emitted += s.emitted;
    }
    std::printf("depth %d: acceptance rate %.3f, tokens per verify step %.3f (%lld steps)\n", depth,
                total.acceptance_rate(), total.tokens_per_step(), static_cast<long long>(total.steps));
  }
}

// sampling_distribution: one-hot argmax for greedy, softmax ratios, the nucleus renormalised.
// Random MTP weights rarely agree with the main model, so the drafts are also replaced by an
// oracle that knows the plain greedy continuation and is right for a varying number of tokens:
// every acceptance count 0..depth, full acceptance included, goes through verify and rollback.
TEST_F(MtpTest, GreedyWithOracleDraftsEqualsGreedy) {
  const ModelConfig& cfg = model().config();
  constexpr int kTokens = 36;
  for (int depth : {1, 2, 3}) {
    for (uint32_t p = 0; p < 3; ++p) {
      const std::vector<int32_t> prompt = test_prompt(cfg.vocab_size, 4 + int(p) * 5, 200 + p);
      const std::vector<int32_t> want = testing::plain_greedy(model(), prompt, kTokens + depth + 2);
      const int64_t p0 = int64_t(prompt.size());
      std::vector<int> counts(size_t(depth + 1), 0);
      int calls = 0;
      SpeculativeOptions so;
      so.depth = depth;
      so.replace_drafts = [&](int64_t pos, std::vector<int32_t>& d) {
        const int right = (calls++ * 7 + int(p)) % (depth + 1);  // right for the first `right` drafts
        for (int i = 0; i < depth; ++i) {
          const int32_t truth = want[size_t(pos - p0 + i)];
          d[size_t(i)] = i < right ? truth : int32_t((truth + 1 + i) % cfg.vocab_size);
        }
      };
      SpeculativeDecoder dec(model(), mtp(), so);
      int32_t first = dec.start(prompt);
      std::vector<int32_t> got = {first};
      while (int(got.size()) < kTokens) {
        const size_t before = got.size();
        dec.step(&got);
        ++counts[got.size() - before - 1];
      }
      got.resize(kTokens);
      EXPECT_EQ(got, std::vector<int32_t>(want.begin(), want.begin() + kTokens)) << "depth " << depth << ", prompt " << p;
      for (int a = 0; a <= depth; ++a) EXPECT_GT(counts[size_t(a)], 0) << "no step accepted " << a << " drafts";
      EXPECT_GT(dec.stats().acceptance_rate(), 0.0);
    }
  }
}

TEST(SamplingDistribution, MatchesSampler) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
  const std::vector<double> g = sampling_distribution(logits, 0.0, 1.0);
  EXPECT_EQ(g[1], 1.0);
  const std::vector<double> t = sampling_distribution(logits, 0.7, 1.0);
  double sum = 0;
  for (double v : t) sum += v;
  EXPECT_NEAR(sum, 1.0, 1e-12);
  EXPECT_NEAR(t[0] / t[4], std::exp((double(0.1f) - double(0.5f)) / 0.7), 1e-12);
  // top_p 0.5: the nucleus is {1, 3} (the two maxima) renormalised.
  const std::vector<double> n = sampling_distribution(logits, 1.0, 0.5);
  EXPECT_NEAR(n[1], 0.5, 1e-12);
  EXPECT_NEAR(n[3], 0.5, 1e-12);
  EXPECT_EQ(n[0] + n[2] + n[4], 0.0);
}

}  // namespace
}  // namespace v4rt::model
