// SPDX-License-Identifier: MIT
// Model::step over several chunks at once (one batch over the concatenated tokens) against each
// chunk run alone: mixed prefill chunks and decode tokens of several sequences, all_logits on and
// off, odd lengths, a sequence named twice in one step, the hidden-state output and a step without
// logits. On the CPU backend the rows of every op are independent, so the logits must be
// bit-identical (tolerance 0), in both numerics. Built with V4RT_BATCHED_STEP_MPI (under mpirun):
// the same equality on every layout of the world size (TP, SP, EP, DP; golden tiny-a), exact
// again, and the sharded batched logits against the single-rank ones within 1e-5 relative. A decode
// step issues its RoPE and row copies once per layer call, however many sequences it holds.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/forwarding_backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/presets.h"
#include "model/synthetic.h"
#include "tests/model/test_util.h"
#if defined(V4RT_BATCHED_STEP_MPI)
#include "cluster/groups.h"
#include "model/distributed.h"
#include "tests/cluster/mpi_test.h"
#include "tests/golden_util.h"
#include "tests/parallel/layout_util.h"
#endif

namespace v4rt::model::testing {
namespace {

// One chunk of a scripted step: sequence index, token count, all_logits, hidden rows (0: none).
struct ChunkSpec {
  int seq;
  int tokens;
  bool all_logits;
  int hidden_rows = 0;
};

int32_t token_at(int seq, int64_t pos, int64_t vocab) { return int32_t((seq * 7919 + pos * 104729 + 13) % vocab); }

class BatchedStep : public ::testing::TestWithParam<Numerics> {
 protected:
  void SetUp() override {
    ModelConfig c = preset_config("tiny");
    c.vocab_size = 1024;  // keeps the CPU head cheap; every other shape is golden tiny-a's
    validate(c, "test config");
    SyntheticOptions so;
    so.seed = 5;
    write_synthetic_checkpoint(c, dir_.str(), so);
    backend_ = kernels::make_cpu_backend();
    ckpt_ = Checkpoint::open(dir_.str());
    ModelOptions mo;
    mo.numerics = GetParam();
    model_ = Model::load(*ckpt_, mo, *backend_);
  }

  TempDir dir_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<Model> model_;
};

// Runs `steps` twice on fresh sequences: once as one Model::step per step (batched), once chunk by
// chunk (one step call per chunk), and compares logits and hidden outputs exactly.
// Returns the batched run's logits, concatenated in step and chunk order.
std::vector<float> run_script(Model& m, kernels::Backend& be, int num_seqs, const std::vector<std::vector<ChunkSpec>>& steps,
                              bool with_logits) {
  std::vector<float> all;
  const int64_t vocab = m.config().vocab_size;
  const int64_t width = m.config().hc_mult * m.config().hidden_size;
  std::vector<std::unique_ptr<SequenceState>> batched, alone;
  for (int s = 0; s < num_seqs; ++s) {
    batched.push_back(m.new_sequence());
    alone.push_back(m.new_sequence());
  }
  for (size_t st = 0; st < steps.size(); ++st) {
    const std::vector<ChunkSpec>& specs = steps[st];
    // Tokens per chunk, at the positions the chunk will occupy (a sequence named twice continues).
    std::vector<std::vector<int32_t>> toks(specs.size());
    std::vector<int64_t> next(static_cast<size_t>(num_seqs));
    for (int s = 0; s < num_seqs; ++s) next[size_t(s)] = batched[size_t(s)]->position();
    for (size_t i = 0; i < specs.size(); ++i)
      for (int t = 0; t < specs[i].tokens; ++t) toks[i].push_back(token_at(specs[i].seq, next[size_t(specs[i].seq)]++, vocab));
    std::vector<Buffer> hid_b(specs.size()), hid_a(specs.size());
    auto make_chunk = [&](size_t i, SequenceState* seq, std::vector<Buffer>& hid) {
      StepChunk c;
      c.sequence = seq;
      c.tokens = toks[i];
      c.all_logits = specs[i].all_logits;
      if (specs[i].hidden_rows > 0) {
        const int64_t rows = specs[i].hidden_rows;
        hid[i] = be.alloc(size_t(rows * width) * sizeof(float));
        c.hidden = TensorView(hid[i].data(), DType::kF32, {rows, m.config().hc_mult, m.config().hidden_size}, be.device());
      }
      return c;
    };
    std::vector<StepChunk> chunks;
    for (size_t i = 0; i < specs.size(); ++i) chunks.push_back(make_chunk(i, batched[size_t(specs[i].seq)].get(), hid_b));
    std::vector<std::vector<float>> lb;
    m.step(chunks, with_logits ? &lb : nullptr);
    for (const std::vector<float>& l : lb) all.insert(all.end(), l.begin(), l.end());
    for (size_t i = 0; i < specs.size(); ++i) {
      const StepChunk c = make_chunk(i, alone[size_t(specs[i].seq)].get(), hid_a);
      std::vector<std::vector<float>> la;
      m.step(std::span<const StepChunk>(&c, 1), with_logits ? &la : nullptr);
      SCOPED_TRACE(::testing::Message() << "step " << st << " chunk " << i << " (seq " << specs[i].seq << ", "
                                        << specs[i].tokens << " tokens, all_logits " << specs[i].all_logits << ")");
      if (with_logits) {
        const size_t rows = specs[i].tokens == 0 ? 0 : specs[i].all_logits ? size_t(specs[i].tokens) : 1;
        EXPECT_EQ(lb[i].size(), rows * size_t(vocab));
        if (la[0].size() != lb[i].size()) {
          ADD_FAILURE() << "logit sizes differ: " << la[0].size() << " vs " << lb[i].size();
          continue;
        }
        size_t diff = 0;
        for (size_t j = 0; j < la[0].size(); ++j) diff += std::memcmp(&la[0][j], &lb[i][j], sizeof(float)) != 0;
        EXPECT_EQ(diff, 0u) << "logits differ from the chunk run alone";
      }
      if (specs[i].hidden_rows > 0) {
        std::vector<float> hb(size_t(specs[i].hidden_rows * width)), ha(hb.size());
        be.copy_to_host(hb.data(), hid_b[i].data(), hb.size() * sizeof(float));
        be.copy_to_host(ha.data(), hid_a[i].data(), ha.size() * sizeof(float));
        EXPECT_EQ(0, std::memcmp(hb.data(), ha.data(), hb.size() * sizeof(float))) << "hidden output differs";
      }
    }
  }
  for (int s = 0; s < num_seqs; ++s) EXPECT_EQ(batched[size_t(s)]->position(), alone[size_t(s)]->position());
  return all;
}

#if !defined(V4RT_BATCHED_STEP_MPI)

TEST_P(BatchedStep, MixedChunksEqualEachChunkAlone) {
  // Four sequences; prompts long enough for CSA entries (ratio 4), indexer keys beyond top-16 and
  // HCA entries (ratio 128), and a window (128) that wraps.
  const std::vector<std::vector<ChunkSpec>> steps = {
      {{0, 37, true}, {1, 1, false}, {2, 130, false, 3}, {3, 5, true}},
      {{0, 1, false}, {1, 91, true}, {2, 1, true, 1}, {3, 0, false}},
      {{3, 67, false}, {0, 1, true}, {1, 1, false}, {2, 1, false}},
      {{2, 9, true}, {0, 113, false}, {3, 1, false}, {1, 1, true}},
      {{0, 1, false}, {1, 1, false}, {2, 1, false}, {3, 1, false}},
      {{1, 3, false}, {1, 1, true}, {0, 1, false}, {1, 2, true}},  // sequence 1 named three times
      {{3, 1, false}, {2, 1, false}, {1, 1, false}, {0, 1, false}},
  };
  run_script(*model_, *backend_, 4, steps, /*with_logits=*/true);
}

TEST_P(BatchedStep, DecodeBatchWithoutLogits) {
  const std::vector<std::vector<ChunkSpec>> steps = {
      {{0, 21, false}, {1, 150, false, 2}, {2, 3, false}},
      {{0, 1, false}, {1, 1, false, 1}, {2, 1, false}},
      {{2, 1, false}, {0, 1, false}, {1, 1, false}},
  };
  run_script(*model_, *backend_, 3, steps, /*with_logits=*/false);
  run_script(*model_, *backend_, 3, steps, /*with_logits=*/true);
}

// Counts the calls a batched step makes once per layer over all its sequences (not per sequence).
class CallCounter final : public kernels::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  void rope(const kernels::RopeParams& p) override {
    ++num_rope;
    inner().rope(p);
  }
  void copy_rows(const TensorView& d, const TensorView& s) override {
    ++num_copy_rows;
    inner().copy_rows(d, s);
  }
  void copy_rows_batch(const kernels::RowCopy* c, size_t n) override {
    ++num_copy_rows_batch;
    inner().copy_rows_batch(c, n);
  }
  // The compressors' pooling and its post-processing.
  void compressor_pool(const kernels::CompressorPoolParams& p) override {
    ++num_pool;
    inner().compressor_pool(p);
  }
  void compressor_pool_batch(const kernels::CompressorPoolBatchParams& p) override {
    ++num_pool;
    inner().compressor_pool_batch(p);
  }
  void rms_norm(const kernels::RmsNormParams& p) override {
    ++num_norm;
    inner().rms_norm(p);
  }
  void hadamard(const kernels::HadamardParams& p) override {
    ++num_hadamard;
    inner().hadamard(p);
  }
  void qdq(const kernels::QdqParams& p) override {
    ++num_qdq;
    inner().qdq(p);
  }
  void kv_pack(const kernels::KvPackParams& p) override {
    ++num_kv_pack;
    inner().kv_pack(p);
  }
  void reset() { num_rope = num_copy_rows = num_copy_rows_batch = num_pool = num_norm = num_hadamard = num_qdq = num_kv_pack = 0; }
  std::vector<int> counts() const {
    return {num_rope, num_copy_rows, num_copy_rows_batch, num_pool, num_norm, num_hadamard, num_qdq, num_kv_pack};
  }
  int num_rope = 0, num_copy_rows = 0, num_copy_rows_batch = 0, num_pool = 0, num_norm = 0, num_hadamard = 0,
      num_qdq = 0, num_kv_pack = 0;
};

TEST_P(BatchedStep, DecodeStepRopeAndCopiesDoNotGrowWithTheBatch) {
  // Sequences at ragged positions, multiples of 4 off the 128-token HCA blocks (the decode token
  // completes no compressor block), below 16 or past the window (no compressor buffer grows by
  // copying its rows in this step).
  CallCounter counter(*backend_);
  ModelOptions mo;
  mo.numerics = GetParam();
  const std::unique_ptr<Model> m = Model::load(*ckpt_, mo, counter);
  auto decode_calls = [&](const std::vector<int>& prompt_lengths) {
    std::vector<std::unique_ptr<SequenceState>> seqs;
    std::vector<std::vector<int32_t>> prompts, next;
    std::vector<StepChunk> chunks;
    for (size_t i = 0; i < prompt_lengths.size(); ++i) {
      seqs.push_back(m->new_sequence());
      prompts.emplace_back(size_t(prompt_lengths[i]), int32_t(7 + i));
      next.push_back({int32_t(11 + i)});
      chunks.push_back({seqs.back().get(), prompts.back(), false, {}});
    }
    m->step(chunks, nullptr);
    for (size_t i = 0; i < chunks.size(); ++i) chunks[i].tokens = next[i];
    counter.reset();
    m->step(chunks, nullptr);
    return counter.counts();
  };
  const char* kCalls = "rope, copy_rows, copy_rows_batch, compressor_pool(_batch), rms_norm, hadamard, qdq, kv_pack calls";
  const std::vector<int> two = decode_calls({8, 132});
  const std::vector<int> five = decode_calls({12, 136, 4, 200, 140});
  EXPECT_EQ(two, five) << kCalls << " of a decode step";
  EXPECT_EQ(two[1], 0) << "row copies of a decode step all go through copy_rows_batch";
  EXPECT_GT(two[0], 0);
  EXPECT_EQ(two[3], 0) << "no compressor block completes";
  // The decode token completes a CSA block in every sequence (positions 3 mod 4, below 16: no
  // buffer grows): the sequences pool together (one call of each op per compressor per layer) and
  // their consumed rows are dropped in one batch.
  const std::vector<int> two_pooling = decode_calls({3, 7});
  const std::vector<int> five_pooling = decode_calls({11, 15, 3, 7, 11});
  EXPECT_EQ(two_pooling, five_pooling) << kCalls << " of a decode step that pools";
  EXPECT_EQ(two_pooling[1], 0);
  EXPECT_GT(two_pooling[2], two[2]);
  EXPECT_GT(two_pooling[3], 0);
  EXPECT_GT(two_pooling[4], two[4]) << "the pooled entries' norm";
}

INSTANTIATE_TEST_SUITE_P(Numerics, BatchedStep, ::testing::Values(Numerics::kReference, Numerics::kOfficial),
                         [](const ::testing::TestParamInfo<Numerics>& i) {
                           return i.param == Numerics::kReference ? "Reference" : "Official";
                         });

#else  // V4RT_BATCHED_STEP_MPI

// Mixed steps on golden tiny-a: CSA/HCA entries, SP blocks of 4 entries (16 tokens) on every rank.
const std::vector<std::vector<ChunkSpec>> kShardedSteps = {
    {{0, 37, true}, {1, 130, false}, {2, 5, false}},
    {{0, 1, false}, {1, 1, true}, {2, 70, true}},
    {{2, 1, false}, {1, 1, false}, {0, 1, true}},
    {{1, 1, false}, {1, 2, true}, {0, 1, false}, {2, 1, false}},
};

using v4rt::testing::test_layout;

struct Layouts {
  const char* name;
  parallel::Layout layout;
};

class ShardedBatchedStep : public ::testing::TestWithParam<Layouts> {};

TEST_P(ShardedBatchedStep, EqualsEachChunkAloneAndSingleRank) {
  const Layouts& c = GetParam();
  if (v4rt::testing::world_size() != c.layout.world()) GTEST_SKIP() << c.name << " needs " << c.layout.world() << " ranks";
  auto ckpt = Checkpoint::open(v4rt::testing::golden_case_dir("tiny-a") + "/model");
  auto backend = kernels::make_cpu_backend();
  static const std::vector<float> single = [&] {
    auto m = Model::load(*ckpt, ModelOptions{}, *backend);
    return run_script(*m, *backend, 3, kShardedSteps, true);
  }();
  cluster::ProcessGroups groups = cluster::make_mpi_groups(parallel::group_shape(c.layout), v4rt::testing::kTestTimeoutS);
  ModelOptions options;
  options.parallel = make_parallel_context(c.layout, ckpt->config(), *backend, groups);
  auto m = Model::load(*ckpt, options, *backend);
  const std::vector<float> sharded = run_script(*m, *backend, 3, kShardedSteps, true);
  ASSERT_EQ(sharded.size(), single.size());
  const double err = v4rt::testing::rel_err(sharded.data(), single.data(), sharded.size());
  if (v4rt::testing::world_rank() == 0) std::printf("  %s: batched sharded vs single rank %.3e\n", c.name, err);
  EXPECT_LE(err, 1e-5) << c.name << " rank " << v4rt::testing::world_rank();
}

INSTANTIATE_TEST_SUITE_P(Layouts, ShardedBatchedStep,
                         ::testing::Values(Layouts{"tp2", test_layout(2, 1, 1, 1)}, Layouts{"sp2", test_layout(1, 2, 1, 1)},
                                           Layouts{"ep2_dp2", test_layout(1, 1, 2, 2)},
                                           Layouts{"tp2_sp2", test_layout(2, 2, 1, 1)},
                                           Layouts{"sp4", test_layout(1, 4, 1, 1)},
                                           Layouts{"ep4_tp2_dp2", test_layout(2, 1, 4, 2)},
                                           Layouts{"dp2_tp2", test_layout(2, 1, 1, 2)}),
                         [](const ::testing::TestParamInfo<Layouts>& i) { return std::string(i.param.name); });

#endif  // V4RT_BATCHED_STEP_MPI

}  // namespace
}  // namespace v4rt::model::testing
