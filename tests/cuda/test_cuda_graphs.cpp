// SPDX-License-Identifier: MIT
// Decode steps recorded as CUDA graphs (kernels/cuda/step_graph.h) against the same steps launched
// op by op, on golden/tiny-a, reference and official numerics:
//  - one sequence: 520-token prefill (not recorded) then 24 single-token steps: every logit of
//    the recorded steps equals the eager run's at least as closely as two eager runs agree with
//    each other (bit for bit when the kernels are deterministic, which they are meant to be);
//  - a batch of 5 sequences at different positions drawing their tokens on the device (greedy
//    and tempered rows, top-5 logprobs) for 40 steps: the same ids and logprobs;
//  - the same prompt in chunks of 64: its last chunk (8 tokens) is recorded too;
//  - the graph cache: after the warm-up step every step is recorded, and most of them update a
//    cached executable in place rather than instantiating a new one.
// Each case runs three times: every step captured (its executable updated); every step logged and
// replayed by a cached executable with the changed nodes set (debug.cuda_graph_replay), which must
// capture only the first step of each shape; and replayed a layer at a time, each layer's segment
// launched as soon as it is logged (debug.cuda_graph_segments).
#include <gtest/gtest.h>

#include <cstdio>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/factory.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "tests/cuda/golden_util.h"

namespace v4rt::model {
namespace {

bool gpu_present() { return kernels::cuda::device_count() > 0; }

struct Loaded {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<Model> model;
};

// How a recorded step runs: captured, replayed whole, replayed a layer at a time.
enum class Mode { kCapture, kReplay, kSegments };

Loaded load(const Checkpoint& ckpt, bool graphs, Numerics numerics, Mode mode = Mode::kCapture) {
  kernels::cuda::CudaBackendOptions o;
  o.graphs = graphs;
  o.graph_replay = mode != Mode::kCapture;
  o.graph_segments = mode == Mode::kSegments;
  Loaded l;
  l.backend = kernels::cuda::make_cuda_backend(0, o);
  ModelOptions mo;
  mo.numerics = numerics;
  l.model = Model::load(ckpt, mo, *l.backend);
  return l;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b, size_t from) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = from; i < a.size() && i < b.size(); ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

// Draws of a batch of sequences, one token per step, every step sampled on the device.
struct Draws {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
};

Draws run_batch(Model& m, int steps) {
  const std::vector<int64_t> prompts = {3, 37, 129, 256, 300};  // lengths: before, at and past block ends
  const auto& ids = golden_util::golden().ids;
  std::vector<std::unique_ptr<SequenceState>> seqs;
  std::vector<int32_t> next(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    seqs.push_back(m.new_sequence());
    std::vector<int32_t> prompt(ids.begin() + int64_t(i), ids.begin() + int64_t(i) + prompts[i]);
    StepChunk c;
    c.sequence = seqs.back().get();
    c.tokens = prompt;
    std::vector<std::vector<float>> logits;
    m.step(std::span<const StepChunk>(&c, 1), &logits);
    next[i] = prompt.back();
  }
  Draws d;
  std::vector<kernels::SampleRow> rows(prompts.size());
  std::vector<SampledToken> out(prompts.size());
  for (int s = 0; s < steps; ++s) {
    std::vector<StepChunk> chunks(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      rows[i].seed = 1234 + i;
      rows[i].position = seqs[i]->position();
      rows[i].temperature = i % 2 ? 0.8f : 0.0f;
      rows[i].top_p = 0.95f;
      rows[i].n_logprobs = 5;
      chunks[i].sequence = seqs[i].get();
      chunks[i].tokens = std::span<const int32_t>(&next[i], 1);
      chunks[i].sample = &rows[i];
      chunks[i].sampled = &out[i];
    }
    m.step(chunks, nullptr);
    for (size_t i = 0; i < prompts.size(); ++i) {
      next[i] = out[i].id;
      d.ids.push_back(out[i].id);
      d.logprobs.push_back(out[i].logprob);
      for (const auto& [id, lp] : out[i].top) {
        d.ids.push_back(id);
        d.logprobs.push_back(lp);
      }
    }
  }
  return d;
}

// (numerics, mode)
class CudaGraphs : public ::testing::TestWithParam<std::tuple<Numerics, Mode>> {
 protected:
  static void SetUpTestSuite() {
    if (gpu_present()) ckpt_ = Checkpoint::open(golden_util::case_dir() + "/model").release();
  }
  static void TearDownTestSuite() { delete ckpt_; }
  void SetUp() override {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device on this machine";
  }
  static Numerics numerics() { return std::get<0>(GetParam()); }
  static Mode mode() { return std::get<1>(GetParam()); }
  static bool replay() { return mode() != Mode::kCapture; }
  static const char* mode_name() {
    return mode() == Mode::kCapture ? "" : mode() == Mode::kReplay ? ", replay" : ", segments";
  }
  // Executables a recorded step runs: one, or with segments one a layer and one for the head.
  static int64_t parts(const Loaded& l) {
    return mode() == Mode::kSegments ? int64_t(l.model->config().num_hidden_layers) + 1 : 1;
  }
  // Executables that were reused: updated in place, or replayed.
  static int64_t reused(const kernels::GraphStats& st) { return replay() ? st.replayed : st.updated; }
  static Checkpoint* ckpt_;
};
Checkpoint* CudaGraphs::ckpt_ = nullptr;

TEST_P(CudaGraphs, RecordedDecodeStepsEqualEagerSteps) {
  const Numerics numerics = CudaGraphs::numerics();
  Loaded eager_a = load(*ckpt_, false, numerics), eager_b = load(*ckpt_, false, numerics);
  Loaded graphs = load(*ckpt_, true, numerics, mode());
  const auto a = golden_util::run(*eager_a.model, 544, 520, {});
  const auto b = golden_util::run(*eager_b.model, 544, 520, {});
  const auto g = golden_util::run(*graphs.model, 544, 520, {});
  const size_t from = size_t(520 * graphs.model->config().vocab_size);  // the decode rows
  const double eager_spread = max_abs_diff(a, b, from), graph_diff = max_abs_diff(a, g, from);
  const kernels::GraphStats st = graphs.backend->graph_stats();
  std::printf("  [graphs] %s%s: decode logits max |eager - eager| %.3e, |eager - graphs| %.3e; %lld recorded "
              "(%lld reused, %lld instantiated, last %lld nodes, %lld nodes set), %lld eager\n",
              numerics == Numerics::kOfficial ? "official" : "reference", mode_name(), eager_spread,
              graph_diff, static_cast<long long>(st.recorded), static_cast<long long>(reused(st)),
              static_cast<long long>(st.instantiated), static_cast<long long>(st.last_nodes),
              static_cast<long long>(st.nodes_set), static_cast<long long>(st.eager));
  EXPECT_LE(graph_diff, eager_spread);
  EXPECT_EQ(eager_a.backend->graph_stats().recorded, 0);
  EXPECT_EQ(st.eager, 1);         // the warm-up step
  EXPECT_EQ(st.recorded, 23);     // the 24 decode steps but the first; the prefill is not recorded
  EXPECT_EQ(reused(st) + st.instantiated, st.recorded * parts(graphs));
  EXPECT_GT(reused(st), st.instantiated);
  EXPECT_EQ(replay() ? st.updated : st.replayed, 0);
}

// A prompt in chunks of 64 ends with a chunk of 8 tokens (520 = 8 x 64 + 8), short enough to be
// recorded: every logit of that chunk and of the decode steps after it equals the eager run's.
TEST_P(CudaGraphs, RecordedShortPrefillChunkEqualsEager) {
  const Numerics numerics = CudaGraphs::numerics();
  Loaded eager_a = load(*ckpt_, false, numerics), eager_b = load(*ckpt_, false, numerics);
  Loaded graphs = load(*ckpt_, true, numerics, mode());
  const auto a = golden_util::run(*eager_a.model, 544, 520, {64});
  const auto b = golden_util::run(*eager_b.model, 544, 520, {64});
  const auto g = golden_util::run(*graphs.model, 544, 520, {64});
  const int64_t vocab = graphs.model->config().vocab_size;
  const size_t chunk = size_t(512 * vocab), decode = size_t(520 * vocab);
  const double eager_spread = max_abs_diff(a, b, chunk);
  const std::vector<float> a_chunk(a.begin(), a.begin() + int64_t(decode)), g_chunk(g.begin(), g.begin() + int64_t(decode));
  const double chunk_diff = max_abs_diff(a_chunk, g_chunk, chunk), decode_diff = max_abs_diff(a, g, decode);
  const kernels::GraphStats st = graphs.backend->graph_stats();
  std::printf("  [graphs] %s, chunks of 64: max |eager - eager| %.3e; |eager - graphs| 8-token chunk %.3e, decode "
              "%.3e; %lld recorded, %lld eager\n",
              numerics == Numerics::kOfficial ? "official" : "reference", eager_spread, chunk_diff, decode_diff,
              static_cast<long long>(st.recorded), static_cast<long long>(st.eager));
  EXPECT_LE(chunk_diff, eager_spread);
  EXPECT_LE(decode_diff, eager_spread);
  EXPECT_EQ(st.recorded + st.eager, 25);  // the 8-token chunk and the 24 decode steps
}

TEST_P(CudaGraphs, RecordedBatchDrawsEqualEagerDraws) {
  const Numerics numerics = CudaGraphs::numerics();
  Loaded eager = load(*ckpt_, false, numerics), graphs = load(*ckpt_, true, numerics, mode());
  const Draws e = run_batch(*eager.model, 40), g = run_batch(*graphs.model, 40);
  EXPECT_EQ(e.ids, g.ids);
  ASSERT_EQ(e.logprobs.size(), g.logprobs.size());
  double worst = 0;
  for (size_t i = 0; i < e.logprobs.size(); ++i) worst = std::max(worst, double(std::abs(e.logprobs[i] - g.logprobs[i])));
  const kernels::GraphStats st = graphs.backend->graph_stats();
  std::printf("  [graphs] batch of 5, 40 steps%s: max |logprob diff| %.3e; %lld recorded (%lld reused, %lld "
              "instantiated)\n",
              mode_name(), worst, static_cast<long long>(st.recorded), static_cast<long long>(reused(st)),
              static_cast<long long>(st.instantiated));
  EXPECT_EQ(worst, 0.0);
  // The 3-token prompt is the warm-up step (decode-shaped, eager); every decode step is recorded.
  EXPECT_EQ(st.eager, 1);
  EXPECT_EQ(st.recorded, 40);
  EXPECT_GT(reused(st), st.instantiated);
}

INSTANTIATE_TEST_SUITE_P(Numerics, CudaGraphs,
                         ::testing::Combine(::testing::Values(Numerics::kReference, Numerics::kOfficial),
                                            ::testing::Values(Mode::kCapture, Mode::kReplay, Mode::kSegments)),
                         [](const auto& info) {
                           const Mode m = std::get<1>(info.param);
                           return std::string(std::get<0>(info.param) == Numerics::kOfficial ? "Official" : "Reference") +
                                  (m == Mode::kCapture ? "Capture" : m == Mode::kReplay ? "Replay" : "Segments");
                         });

}  // namespace
}  // namespace v4rt::model
