// SPDX-License-Identifier: MIT
// The step-graph contract (kernels/backend.h, Backend::begin_graph) the model keeps, checked on the
// CPU backend behind GraphRulesBackend, a double that answers graphs() = true and fails a test on
// every broken rule: a host read (copy_to_host) or a wait (synchronize) while recording, a
// recording begun inside another, an end or abort without one. It keeps each recording's op
// signature (the op kinds in issue order). On the tiny model, in both numerics:
//  - every decode step of a batch is one recording that ends, and its logits and device draws equal
//    the same steps on the plain CPU backend bit for bit;
//  - a chunk longer than 16 tokens, a mixed prefill + decode step and a layer observer record
//    nothing;
//  - an op that throws while recording leaves through abort_graph, and the next step records;
//  - the signature of a sequence's decode step depends only on which of its compressors complete
//    a block in it and which window tails move their rows (to the front of their table, once per
//    model::kWindowSlackRows steps, or to a larger one after a prefill), the property that lets a
//    recorded graph update a cached executable graph in place (the first step after a prefill
//    included: no token buffer grows inside a recording).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/op_scope.h"
#include "kernels/backend.h"
#include "kernels/forwarding_backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "tests/model/test_util.h"

namespace v4rt::model::testing {
namespace {

// ------------------------------------------------------------------------------------------------
// GraphRulesBackend
// ------------------------------------------------------------------------------------------------

// One begin_graph .. end_graph / abort_graph: the ops issued in between, in order, and where the
// model was when it issued each (OpScope, for failure messages only).
struct Recording {
  std::vector<std::string> ops;
  std::vector<std::string> scopes;
  bool ended = false;
  bool aborted = false;
  int segments = 0;  // graph_segment calls (one at the end of each layer)
};

class GraphRulesBackend final : public kernels::ForwardingBackend {
 public:
  explicit GraphRulesBackend(std::unique_ptr<kernels::Backend> inner) : ForwardingBackend(std::move(inner)) {}

  const std::vector<Recording>& recordings() const { return recordings_; }
  bool recording() const { return recording_; }
  int64_t ends() const { return ends_; }
  int64_t aborts() const { return aborts_; }
  // The next `op` ("sparse_attention": either form) issued while recording throws v4rt::Error.
  void fail_next(const std::string& op) { fail_on_ = op; }

  bool graphs() const override { return true; }
  void begin_graph() override {
    if (recording_) ADD_FAILURE() << "begin_graph while recording (recording " << recordings_.size() - 1 << ")";
    recording_ = true;
    recordings_.emplace_back();
  }
  void end_graph() override {
    if (!recording_) {
      ADD_FAILURE() << "end_graph without a recording";
      return;
    }
    recording_ = false;
    recordings_.back().ended = true;
    ++ends_;
  }
  void graph_segment() override {
    if (!recording_) {
      ADD_FAILURE() << "graph_segment without a recording";
      return;
    }
    recordings_.back().segments++;
  }
  void abort_graph() override {
    if (!recording_) {
      ADD_FAILURE() << "abort_graph without a recording";
      return;
    }
    recording_ = false;
    recordings_.back().aborted = true;
    ++aborts_;
  }

  void copy_to_host(void* d, const void* s, size_t b) override {
    refused("copy_to_host");
    inner().copy_to_host(d, s, b);
  }
  void synchronize() override {
    refused("synchronize");
    inner().synchronize();
  }
  void copy_to_device(void* d, const void* s, size_t b) override {
    issue("copy_to_device");
    inner().copy_to_device(d, s, b);
  }
  void copy_rows(const TensorView& d, const TensorView& s) override {
    issue("copy_rows");
    inner().copy_rows(d, s);
  }
  void copy_rows_batch(const kernels::RowCopy* c, size_t n) override {
    issue("copy_rows_batch");
    inner().copy_rows_batch(c, n);
  }
  void fill(const TensorView& d, float v) override {
    issue("fill");
    inner().fill(d, v);
  }

  void rms_norm(const kernels::RmsNormParams& p) override { issue("rms_norm"); inner().rms_norm(p); }
  void rope(const kernels::RopeParams& p) override { issue("rope"); inner().rope(p); }
  void hc_pre(const kernels::HcPreParams& p) override { issue("hc_pre"); inner().hc_pre(p); }
  void hc_post(const kernels::HcPostParams& p) override { issue("hc_post"); inner().hc_post(p); }
  void hc_head(const kernels::HcHeadParams& p) override { issue("hc_head"); inner().hc_head(p); }
  void linear(const kernels::LinearParams& p) override { issue("linear"); inner().linear(p); }
  void grouped_linear(const kernels::GroupedLinearParams& p) override {
    issue("grouped_linear");
    inner().grouped_linear(p);
  }
  void compressor_pool(const kernels::CompressorPoolParams& p) override {
    issue("compressor_pool");
    inner().compressor_pool(p);
  }
  void compressor_pool_batch(const kernels::CompressorPoolBatchParams& p) override {
    issue("compressor_pool_batch");
    inner().compressor_pool_batch(p);
  }
  void hadamard(const kernels::HadamardParams& p) override { issue("hadamard"); inner().hadamard(p); }
  void indexer_scores(const kernels::IndexerScoresParams& p) override {
    issue("indexer_scores");
    inner().indexer_scores(p);
  }
  void indexer_scores_batch(const kernels::IndexerScoresBatchParams& p) override {
    issue("indexer_scores_batch");
    inner().indexer_scores_batch(p);
  }
  void topk(const kernels::TopkParams& p) override { issue("topk"); inner().topk(p); }
  void sparse_attention(const kernels::SparseAttentionParams& p) override {
    issue("sparse_attention");
    inner().sparse_attention(p);
  }
  void sparse_attention_batch(const kernels::SparseAttentionBatchParams& p) override {
    issue("sparse_attention_batch");
    inner().sparse_attention_batch(p);
  }
  void moe_gate(const kernels::MoeGateParams& p) override { issue("moe_gate"); inner().moe_gate(p); }
  void moe_experts(const kernels::MoeExpertsParams& p) override { issue("moe_experts"); inner().moe_experts(p); }
  void swiglu(const kernels::SwigluParams& p) override { issue("swiglu"); inner().swiglu(p); }
  void embedding(const kernels::EmbeddingParams& p) override { issue("embedding"); inner().embedding(p); }
  void add(const kernels::AddParams& p) override { issue("add"); inner().add(p); }
  void qdq(const kernels::QdqParams& p) override { issue("qdq"); inner().qdq(p); }
  void sample(const kernels::SampleParams& p) override { issue("sample"); inner().sample(p); }
  void kv_pack(const kernels::KvPackParams& p) override { issue("kv_pack"); inner().kv_pack(p); }

 private:
  // A call the rules refuse between begin_graph and end_graph.
  void refused(const char* name) {
    if (recording_) ADD_FAILURE() << name << " while recording (recording " << recordings_.size() - 1 << ")";
  }
  // An op that a graph would capture: its kind joins the recording's signature.
  void issue(const std::string& name) {
    if (!recording_) return;
    recordings_.back().ops.push_back(name);
    recordings_.back().scopes.push_back(current_op_scope());
    if (!fail_on_.empty() && name.rfind(fail_on_, 0) == 0) {
      fail_on_.clear();
      V4RT_FAIL("GraphRulesBackend: " << name << " fails as armed");
    }
  }

  std::vector<Recording> recordings_;
  bool recording_ = false;
  int64_t ends_ = 0;
  int64_t aborts_ = 0;
  std::string fail_on_;
};

// The first place two recordings' signatures part, for a failure message.
std::string first_difference(const Recording& a, const Recording& b) {
  size_t i = 0;
  while (i < a.ops.size() && i < b.ops.size() && a.ops[i] == b.ops[i]) ++i;
  auto at = [i](const Recording& r) {
    return i < r.ops.size() ? r.ops[i] + " in " + r.scopes[i] : std::string("<end>");
  };
  std::ostringstream os;
  os << a.ops.size() << " vs " << b.ops.size() << " ops; op " << i << ": " << at(a) << " vs " << at(b);
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// The fixture: the tiny model twice over one checkpoint, behind the double and on the plain CPU
// backend.
// ------------------------------------------------------------------------------------------------

int32_t token_at(int seq, int64_t pos, int64_t vocab) { return int32_t((seq * 7919 + pos * 104729 + 13) % vocab); }

class StepGraph : public ::testing::TestWithParam<Numerics> {
 protected:
  void SetUp() override {
    ModelConfig c = preset_config("tiny");
    c.vocab_size = 1024;  // keeps the CPU head cheap; every other shape is golden tiny-a's
    validate(c, "test config");
    SyntheticOptions so;
    so.seed = 11;
    write_synthetic_checkpoint(c, dir_.str(), so);
    ckpt_ = Checkpoint::open(dir_.str());
    ModelOptions mo;
    mo.numerics = GetParam();
    rules_ = std::make_unique<GraphRulesBackend>(kernels::make_cpu_backend());
    plain_ = kernels::make_cpu_backend();
    graphed_ = Model::load(*ckpt_, mo, *rules_);
    eager_ = Model::load(*ckpt_, mo, *plain_);
  }

  // The next `tokens` tokens of sequence `seq` (a function of the sequence and the position).
  std::vector<int32_t> tokens_for(int seq, const SequenceState& state, int tokens) const {
    std::vector<int32_t> t;
    for (int i = 0; i < tokens; ++i) t.push_back(token_at(seq, state.position() + i, graphed_->config().vocab_size));
    return t;
  }

  // Steps one chunk of `tokens` tokens on `state` (logits of its last row).
  void step_one(Model& m, int seq, SequenceState& state, int tokens) {
    const std::vector<int32_t> t = tokens_for(seq, state, tokens);
    StepChunk c;
    c.sequence = &state;
    c.tokens = t;
    std::vector<std::vector<float>> logits;
    m.step(std::span<const StepChunk>(&c, 1), &logits);
  }

  TempDir dir_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<GraphRulesBackend> rules_;
  std::unique_ptr<kernels::Backend> plain_;
  std::unique_ptr<Model> graphed_;  // on rules_
  std::unique_ptr<Model> eager_;    // on plain_
};

// ------------------------------------------------------------------------------------------------
// (a) decode steps: one recording each, the rules kept, the eager backend's numbers
// ------------------------------------------------------------------------------------------------

TEST_P(StepGraph, DecodeStepsRecordOneGraphEachAndEqualEagerSteps) {
  // Four sequences at different positions (prompts of 5, 37, 130 and 9 tokens: HCA entries exist
  // in the third); chunks 0 and 2 draw on the device (one at temperature 0.8 with logprobs), chunk
  // 1 returns its logits, chunk 3 is a 2-token chunk with all its logits (a verify step's shape).
  const int kSeqs = 4;
  const int prompt[kSeqs] = {5, 37, 130, 9};
  std::vector<std::unique_ptr<SequenceState>> g, e;
  for (int s = 0; s < kSeqs; ++s) {
    g.push_back(graphed_->new_sequence());
    e.push_back(eager_->new_sequence());
    step_one(*graphed_, s, *g.back(), prompt[s]);
    step_one(*eager_, s, *e.back(), prompt[s]);
  }
  ASSERT_FALSE(rules_->recording());
  for (int st = 0; st < 6; ++st) {
    SCOPED_TRACE(::testing::Message() << "decode step " << st);
    std::vector<std::vector<int32_t>> toks;
    for (int s = 0; s < kSeqs; ++s) toks.push_back(tokens_for(s, *g[size_t(s)], s == 3 ? 2 : 1));
    kernels::SampleRow greedy, warm;
    greedy.position = g[0]->position() + 1;
    warm.seed = 77;
    warm.position = g[2]->position() + 1;
    warm.temperature = 0.8f;
    warm.top_p = 0.9f;
    warm.n_logprobs = 3;
    SampledToken drawn_g[2], drawn_e[2];
    auto chunks_of = [&](std::vector<std::unique_ptr<SequenceState>>& seqs, SampledToken* drawn) {
      std::vector<StepChunk> chunks(kSeqs);
      for (int s = 0; s < kSeqs; ++s) {
        chunks[size_t(s)].sequence = seqs[size_t(s)].get();
        chunks[size_t(s)].tokens = toks[size_t(s)];
      }
      chunks[0].sample = &greedy;
      chunks[0].sampled = &drawn[0];
      chunks[2].sample = &warm;
      chunks[2].sampled = &drawn[1];
      chunks[3].all_logits = true;
      return chunks;
    };
    const size_t before = rules_->recordings().size();
    const int64_t ends = rules_->ends();
    std::vector<std::vector<float>> lg, le;
    graphed_->step(chunks_of(g, drawn_g), &lg);
    eager_->step(chunks_of(e, drawn_e), &le);
    ASSERT_EQ(rules_->recordings().size(), before + 1) << "one recording per decode step";
    const Recording& r = rules_->recordings().back();
    EXPECT_TRUE(r.ended && !r.aborted);
    EXPECT_EQ(r.segments, graphed_->config().num_hidden_layers) << "a segment point at the end of each layer";
    EXPECT_EQ(rules_->ends(), ends + 1);
    EXPECT_EQ(rules_->aborts(), 0);
    EXPECT_EQ(std::count(r.ops.begin(), r.ops.end(), "sample"), 1) << "the draws are enqueued inside the recording";
    ASSERT_EQ(lg.size(), le.size());
    for (int s = 0; s < kSeqs; ++s) {
      ASSERT_EQ(lg[size_t(s)].size(), le[size_t(s)].size()) << "chunk " << s;
      EXPECT_EQ(0, std::memcmp(lg[size_t(s)].data(), le[size_t(s)].data(), lg[size_t(s)].size() * sizeof(float)))
          << "chunk " << s << ": logits differ from the eager step";
    }
    EXPECT_TRUE(lg[0].empty() && lg[2].empty()) << "a drawn chunk's logits stay on the device";
    EXPECT_EQ(lg[1].size(), size_t(graphed_->config().vocab_size));
    EXPECT_EQ(lg[3].size(), size_t(2 * graphed_->config().vocab_size));
    for (int d = 0; d < 2; ++d) {
      EXPECT_GE(drawn_g[d].id, 0);
      EXPECT_EQ(drawn_g[d].id, drawn_e[d].id) << "draw " << d;
      EXPECT_EQ(0, std::memcmp(&drawn_g[d].logprob, &drawn_e[d].logprob, sizeof(float))) << "draw " << d;
      EXPECT_EQ(drawn_g[d].top, drawn_e[d].top) << "draw " << d;
    }
    EXPECT_EQ(drawn_g[1].top.size(), 3u);
  }
}

// ------------------------------------------------------------------------------------------------
// (b) (c) steps that are not recorded
// ------------------------------------------------------------------------------------------------

TEST_P(StepGraph, LongChunksAndMixedStepsAreNotRecorded) {
  auto a = graphed_->new_sequence();
  auto b = graphed_->new_sequence();
  auto c = graphed_->new_sequence();
  step_one(*graphed_, 0, *a, 17);  // one token past the decode shape
  EXPECT_TRUE(rules_->recordings().empty()) << "a 17-token chunk was recorded";
  step_one(*graphed_, 1, *b, 16);  // the longest decode-shaped chunk
  ASSERT_EQ(rules_->recordings().size(), 1u) << "a 16-token chunk was not recorded";
  EXPECT_TRUE(rules_->recordings()[0].ended);
  step_one(*graphed_, 2, *c, 3);
  ASSERT_EQ(rules_->recordings().size(), 2u);

  // One prefill chunk of 40 tokens with two decode chunks: not recorded, logits as eager.
  auto fresh = graphed_->new_sequence();
  const std::vector<int32_t> ta = tokens_for(0, *a, 1), tf = tokens_for(3, *fresh, 40), tc = tokens_for(2, *c, 1);
  std::vector<StepChunk> chunks(3);
  chunks[0].sequence = a.get();
  chunks[0].tokens = ta;
  chunks[1].sequence = fresh.get();
  chunks[1].tokens = tf;
  chunks[2].sequence = c.get();
  chunks[2].tokens = tc;
  std::vector<std::vector<float>> logits;
  graphed_->step(chunks, &logits);
  EXPECT_EQ(rules_->recordings().size(), 2u) << "a mixed prefill + decode step was recorded";
  EXPECT_EQ(logits[1].size(), size_t(graphed_->config().vocab_size));
  EXPECT_EQ(rules_->aborts(), 0);
}

TEST_P(StepGraph, LayerObserverTurnsRecordingOff) {
  auto s = graphed_->new_sequence();
  step_one(*graphed_, 0, *s, 20);
  int observed = 0;
  graphed_->set_layer_observer([&](int, int64_t, const TensorView&) { ++observed; });
  step_one(*graphed_, 0, *s, 1);
  EXPECT_EQ(observed, graphed_->config().num_hidden_layers);
  EXPECT_TRUE(rules_->recordings().empty()) << "a step with a layer observer was recorded";
  graphed_->set_layer_observer(nullptr);
  step_one(*graphed_, 0, *s, 1);
  ASSERT_EQ(rules_->recordings().size(), 1u) << "recording did not come back without the observer";
  EXPECT_TRUE(rules_->recordings()[0].ended);
}

// ------------------------------------------------------------------------------------------------
// (d) an op that throws while recording
// ------------------------------------------------------------------------------------------------

TEST_P(StepGraph, ThrowingOpAbortsTheRecording) {
  std::vector<std::unique_ptr<SequenceState>> seqs;
  for (int s = 0; s < 3; ++s) {
    seqs.push_back(graphed_->new_sequence());
    step_one(*graphed_, s, *seqs.back(), 20 + 3 * s);
  }
  std::vector<std::vector<int32_t>> toks;
  std::vector<StepChunk> chunks(3);
  for (int s = 0; s < 3; ++s) toks.push_back(tokens_for(s, *seqs[size_t(s)], 1));
  for (int s = 0; s < 3; ++s) {
    chunks[size_t(s)].sequence = seqs[size_t(s)].get();
    chunks[size_t(s)].tokens = toks[size_t(s)];
  }
  rules_->fail_next("sparse_attention");
  std::vector<std::vector<float>> logits;
  expect_error_naming([&] { graphed_->step(chunks, &logits); }, {"sparse_attention", "fails as armed"});
  ASSERT_EQ(rules_->recordings().size(), 1u);
  EXPECT_TRUE(rules_->recordings()[0].aborted) << "the recording was not aborted";
  EXPECT_FALSE(rules_->recordings()[0].ended) << "a failed step ended its recording";
  EXPECT_EQ(rules_->aborts(), 1);
  EXPECT_EQ(rules_->ends(), 0);
  EXPECT_FALSE(rules_->recording());

  // The failed step left its sequences half-way; a new one records normally.
  auto next = graphed_->new_sequence();
  step_one(*graphed_, 5, *next, 4);
  ASSERT_EQ(rules_->recordings().size(), 2u);
  EXPECT_TRUE(rules_->recordings()[1].ended && !rules_->recordings()[1].aborted);
  EXPECT_EQ(rules_->aborts(), 1);
}

// ------------------------------------------------------------------------------------------------
// (e) the op signature of a decode step
// ------------------------------------------------------------------------------------------------

// Which compressors (main and indexer of every layer) completed a block between two snapshots of
// their entry counts.
std::vector<int64_t> entry_counts(const SequenceState& s) {
  std::vector<int64_t> n;
  for (int l = 0; l < s.num_layers(); ++l) {
    n.push_back(s.layer(l).main.num_entries);
    n.push_back(s.layer(l).indexer.num_entries);
  }
  return n;
}

std::string completed(const std::vector<int64_t>& before, const std::vector<int64_t>& after) {
  std::string key;
  for (size_t i = 0; i < before.size(); ++i) key += after[i] != before[i] ? '1' : '0';
  return key;
}

// Where each layer's window tail starts (its first row).
std::vector<const char*> window_starts(const SequenceState& s) {
  std::vector<const char*> w;
  for (int l = 0; l < s.num_layers(); ++l) w.push_back(static_cast<const char*>(s.layer(l).window_tail.view().data));
  return w;
}

// Per layer, whether a decode step moved its window tail's rows (to the front of its table or to a
// larger one, model/row_table.h) rather than leaving them in place (the same start, or one row on
// when the oldest row left the window).
std::string moved(const SequenceState& s, const std::vector<const char*>& before) {
  const std::vector<const char*> after = window_starts(s);
  std::string key;
  for (int l = 0; l < s.num_layers(); ++l) {
    const int64_t row = s.layer(l).window_tail.row_bytes();
    key += after[size_t(l)] == before[size_t(l)] || after[size_t(l)] == before[size_t(l)] + row ? '0' : 'm';
  }
  return key;
}

TEST_P(StepGraph, DecodeSignatureDependsOnlyOnCompletedBlocksAndWindowMoves) {
  const ModelConfig& cfg = graphed_->config();
  int csa = 0, hca = 0;
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const int r = cfg.compress_ratio(l);
    if (r == 0) continue;
    (r < 128 ? csa : hca) = r;
  }
  ASSERT_EQ(csa, 4);
  ASSERT_GT(hca, 8);
  // Decode steps from position hca - 8 to hca + 12 of one sequence: past the window's fill and the
  // indexer's top-k, across the first HCA block. The first step follows a prefill that left the
  // HCA token buffers full (SequenceState::reserve grows them before the recording).
  const int64_t first = hca - 8, last = hca + 12;
  auto s = graphed_->new_sequence();
  step_one(*graphed_, 0, *s, int(first));
  std::map<int64_t, std::string> key_at;                    // position -> completed compressors
  std::map<int64_t, Recording> rec_at;                      // position -> its recording
  std::map<std::string, int64_t> first_of_key;             // completed compressors -> first position
  for (int64_t p = first; p <= last; ++p) {
    const std::vector<int64_t> before = entry_counts(*s);
    const std::vector<const char*> windows = window_starts(*s);
    const size_t n = rules_->recordings().size();
    step_one(*graphed_, 0, *s, 1);
    ASSERT_EQ(rules_->recordings().size(), n + 1);
    key_at[p] = completed(before, entry_counts(*s)) + moved(*s, windows);
    rec_at[p] = rules_->recordings().back();
    first_of_key.emplace(key_at[p], p);
  }
  const std::string none(key_at.begin()->second.size(), '0');
  // Two steps a CSA ratio apart where nothing completes (p + 1 not a multiple of 4 or of hca).
  const int64_t p = hca + 1;
  ASSERT_EQ(key_at[p], none);
  ASSERT_EQ(key_at[p + csa], none);
  EXPECT_EQ(rec_at[p].ops, rec_at[p + csa].ops) << "positions " << p << " and " << p + csa << ": "
                                        << first_difference(rec_at[p], rec_at[p + csa]);
  // A step where the CSA blocks complete differs from one where nothing does.
  int64_t csa_step = -1;
  for (const auto& [pos, key] : key_at)
    if (key != none && (pos + 1) % hca != 0) csa_step = pos;
  ASSERT_GE(csa_step, 0);
  EXPECT_NE(rec_at[csa_step].ops, rec_at[p].ops) << "a CSA block completing at " << csa_step << " issued the same ops";
  // Over the whole range: equal completions, equal signatures.
  EXPECT_GE(first_of_key.size(), 3u) << "expected steps with nothing, CSA, and CSA + HCA completing";
  for (const auto& [pos, key] : key_at) {
    const int64_t ref = first_of_key.at(key);
    EXPECT_EQ(rec_at[pos].ops, rec_at[ref].ops) << "positions " << ref << " and " << pos << " (completed " << key
                                        << "): " << first_difference(rec_at[ref], rec_at[pos]);
  }
}

INSTANTIATE_TEST_SUITE_P(Numerics, StepGraph, ::testing::Values(Numerics::kReference, Numerics::kOfficial),
                         [](const ::testing::TestParamInfo<Numerics>& i) {
                           return i.param == Numerics::kReference ? std::string("Reference") : std::string("Official");
                         });

}  // namespace
}  // namespace v4rt::model::testing
