// SPDX-License-Identifier: MIT
// The sharded forward under mpirun equals the single-rank forward on golden tiny-a, for every
// supported layout of the world size (np 2: tp2, sp2, ep2; np 4: tp2*sp2, sp4, ep4 with tp2,
// dp2*tp2): logits of one 320-token prefill, and of a 301 + 19 chunked prefill followed by 4
// decode steps, within relative error 1e-5 of the single-rank run (computed on every rank). SP uses
// blocks of 4 entries, so every SP rank holds several blocks of the 80 CSA entries.
// Also checked: per-rank weight bytes against the analytic share of the checkpoint (10 %), and the
// bytes one decode step sends, against counts derived here from the config (tp2, sp2).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/distributed.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tests/cluster/mpi_test.h"
#include "tests/golden_util.h"
#include "tests/parallel/layout_util.h"

namespace v4rt::model {
namespace {

constexpr double kTol = 1e-5;           // sharded vs single rank
constexpr double kGoldenTol = 1e-4;     // vs the independent implementation (golden/README.md)
constexpr int64_t kPrompt = 320;        // tokens of the prefill
constexpr int64_t kFirstChunk = 301;    // chunked prefill: 301 + 19
constexpr int64_t kDecode = 4;          // decode steps after the chunked prefill
const std::string kCase = testing::golden_case_dir("tiny-a");

using testing::rel_err;
using v4rt::testing::test_layout;

const testing::GoldenReference& golden() { return testing::golden_reference("tiny-a"); }

// Feeds ids[0, len): [0, prompt) in chunks (first chunk `first`, then the rest), then one token at
// a time. Returns the logits after every token [len, vocab].
std::vector<float> run(Model& m, int64_t len, int64_t prompt, int64_t first) {
  const auto& ids = golden().ids;
  const int64_t vocab = m.config().vocab_size;
  auto seq = m.new_sequence();
  std::vector<float> all(size_t(len * vocab));
  for (int64_t pos = 0; pos < len;) {
    const int64_t n = pos == 0 ? std::min(first, prompt) : (pos < prompt ? prompt - pos : 1);
    StepChunk c{seq.get(), std::span<const int32_t>(ids.data() + pos, size_t(n)), true};
    std::vector<std::vector<float>> logits;
    m.step(std::span<const StepChunk>(&c, 1), &logits);
    std::memcpy(all.data() + pos * vocab, logits[0].data(), logits[0].size() * 4);
    pos += n;
  }
  return all;
}

struct Shared {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<kernels::Backend> backend;
  std::vector<float> ref_prefill;  // single rank, one chunk of kPrompt
  std::vector<float> ref_chunked;  // single rank, 301 + 19 then kDecode decode steps
};

Shared& shared() {
  static Shared s = [] {
    Shared out;
    out.ckpt = Checkpoint::open(kCase + "/model");
    out.backend = kernels::make_cpu_backend();
    auto single = Model::load(*out.ckpt, ModelOptions{}, *out.backend);
    out.ref_prefill = run(*single, kPrompt, kPrompt, kPrompt);
    out.ref_chunked = run(*single, kPrompt + kDecode, kPrompt, kFirstChunk);
    return out;
  }();
  return s;
}

// The checkpoint bytes (scales included) a rank of `plan` holds, from the tensor list alone.
double analytic_share(const Checkpoint& ckpt, const parallel::ShardPlan& plan) {
  const ModelConfig& cfg = ckpt.config();
  const std::regex expert(R"(\.ffn\.experts\.(\d+)\.)");
  double total = 0;
  for (const auto& [name, info] : ckpt.tensors()) {
    double fraction = 1.0;
    std::smatch m;
    if (std::regex_search(name, m, expert)) {
      fraction = plan.experts.contains(std::stoi(m[1])) ? 1.0 : 0.0;
    } else if (name.find("attn.wq_b.") != std::string::npos || name.find("attn.attn_sink") != std::string::npos) {
      fraction = double(plan.heads.size()) / cfg.num_attention_heads;
    } else if (name.find("attn.wo_a.") != std::string::npos || name.find("attn.wo_b.") != std::string::npos) {
      fraction = double(plan.o_groups.size()) / cfg.o_groups;
    } else if (name.find("indexer.wq_b.") != std::string::npos || name.find("indexer.weights_proj.") != std::string::npos) {
      fraction = double(plan.index_heads.size()) / cfg.index_n_heads;
    }
    total += fraction * double(info.bytes);
  }
  return total;
}

struct Case {
  const char* name;
  parallel::Layout layout;
};

class ShardedTinyA : public ::testing::Test {
 protected:
  // Runs the equality checks for `layout` (skipped unless the world matches it).
  void check_layout(const Case& c) {
    const parallel::Layout& layout = c.layout;
    if (v4rt::testing::world_size() != layout.world()) {
      GTEST_SKIP() << c.name << " needs " << layout.world() << " ranks";
    }
    Shared& sh = shared();
    cluster::ProcessGroups groups = cluster::make_mpi_groups(parallel::group_shape(layout), v4rt::testing::kTestTimeoutS);
    ModelOptions options;
    options.parallel = make_parallel_context(layout, sh.ckpt->config(), *sh.backend, groups);
    auto m = Model::load(*sh.ckpt, options, *sh.backend);
    const int rank = v4rt::testing::world_rank();

    // Weight share.
    const double expect = analytic_share(*sh.ckpt, options.parallel.plan);
    const double got = double(m->weight_bytes());
    EXPECT_NEAR(got / expect, 1.0, 0.10) << c.name << " rank " << rank << ": loaded " << got << " bytes, share " << expect;

    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> prefill = run(*m, kPrompt, kPrompt, kPrompt);
    const std::vector<float> chunked = run(*m, kPrompt + kDecode, kPrompt, kFirstChunk);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double e_prefill = rel_err(prefill.data(), sh.ref_prefill.data(), prefill.size());
    const double e_chunked = rel_err(chunked.data(), sh.ref_chunked.data(), chunked.size());
    const double e_golden = rel_err(prefill.data(), golden().at("prefill_logits").data(), prefill.size());
    if (rank == 0) {
      std::printf("  %s: vs single rank: prefill %.3e, chunked+decode %.3e; vs golden %.3e; weights %.0f B "
                  "(share %.0f B); %.2f s\n",
                  c.name, e_prefill, e_chunked, e_golden, got, expect, secs);
    }
    EXPECT_LE(e_prefill, kTol) << c.name << " rank " << rank;
    EXPECT_LE(e_chunked, kTol) << c.name << " rank " << rank;
    EXPECT_LE(e_golden, kGoldenTol) << c.name << " rank " << rank;
  }
};

TEST_F(ShardedTinyA, Tp2) { check_layout({"tp2", test_layout(2, 1, 1, 1)}); }
TEST_F(ShardedTinyA, Sp2) { check_layout({"sp2", test_layout(1, 2, 1, 1)}); }
// Experts over 2 ranks; the attention is replicated (two data-parallel replicas of one sequence).
TEST_F(ShardedTinyA, Ep2) { check_layout({"ep2 (dp2)", test_layout(1, 1, 2, 2)}); }
TEST_F(ShardedTinyA, Tp2Sp2) { check_layout({"tp2 sp2", test_layout(2, 2, 1, 1)}); }
TEST_F(ShardedTinyA, Sp4) { check_layout({"sp4", test_layout(1, 4, 1, 1)}); }
TEST_F(ShardedTinyA, Ep4Tp2) { check_layout({"ep4 tp2 (dp2)", test_layout(2, 1, 4, 2)}); }
TEST_F(ShardedTinyA, Dp2Tp2) { check_layout({"dp2 tp2", test_layout(2, 1, 1, 2)}); }

// Bytes one decode step sends, derived from the config: after P tokens a CSA layer holds P/4
// entries (indexer keys) and an HCA layer P/128.
class StepBytes : public ::testing::Test {
 protected:
  struct Measured {
    uint64_t tp = 0, sp = 0;
    int64_t position = 0;  // tokens before the measured step
  };
  Measured measure(const parallel::Layout& layout) {
    Shared& sh = shared();
    cluster::ProcessGroups groups = cluster::make_mpi_groups(parallel::group_shape(layout), v4rt::testing::kTestTimeoutS);
    ModelOptions options;
    options.parallel = make_parallel_context(layout, sh.ckpt->config(), *sh.backend, groups);
    auto m = Model::load(*sh.ckpt, options, *sh.backend);
    auto seq = m->new_sequence();
    const auto& ids = golden().ids;
    Measured out;
    out.position = 300;
    StepChunk c{seq.get(), std::span<const int32_t>(ids.data(), size_t(out.position)), false};
    m->step(std::span<const StepChunk>(&c, 1), nullptr);
    groups.tp->reset_counters();
    groups.sp->reset_counters();
    c.tokens = std::span<const int32_t>(ids.data() + out.position, 1);
    m->step(std::span<const StepChunk>(&c, 1), nullptr);
    out.tp = groups.tp->counters().total_bytes();
    out.sp = groups.sp->counters().total_bytes();
    return out;
  }
};

TEST_F(StepBytes, Tp2DecodeStep) {
  V4RT_REQUIRE_WORLD(2);
  if (v4rt::testing::world_size() != 2) GTEST_SKIP() << "tp2 runs on 2 ranks";
  const Measured got = measure(test_layout(2, 1, 1, 1));
  const ModelConfig& cfg = shared().ckpt->config();
  // Per layer: wo_b partial sum, all-reduce of [1, D] f32: 2*(tp-1)/tp * D * 4 = D * 4 bytes.
  // Per CSA layer: indexer scores, all-reduce of [1, keys] f32, keys = (P+1)/4 after the push.
  const int64_t p_end = got.position + 1;
  uint64_t expect = 0;
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    expect += uint64_t(cfg.hidden_size) * 4;
    if (cfg.compress_ratio(l) == 4) expect += uint64_t(p_end / 4) * 4;
  }
  if (v4rt::testing::world_rank() == 0) std::printf("  tp2 decode step: %llu bytes sent per rank (analytic %llu)\n",
                                                    static_cast<unsigned long long>(got.tp), static_cast<unsigned long long>(expect));
  EXPECT_EQ(got.tp, expect);
}

TEST_F(StepBytes, Sp2DecodeStep) {
  if (v4rt::testing::world_size() != 2) GTEST_SKIP() << "sp2 runs on 2 ranks";
  const Measured got = measure(test_layout(1, 2, 1, 1));
  const ModelConfig& cfg = shared().ckpt->config();
  // Per CSA layer: distributed top-k, all_gathers of k f32 scores and k i32 local indices (8 bytes
  // a candidate), k = min(index_topk, P/4); per compressed layer with entries: the attention merge,
  // all_gathers of H rows of head_dim f32 outputs and H f32 log-sum-exps. (sp - 1) = 1 peer.
  const int64_t p_end = got.position + 1;
  uint64_t expect = 0;
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const int ratio = cfg.compress_ratio(l);
    if (ratio == 0 || p_end / ratio == 0) continue;
    if (ratio == 4) expect += uint64_t(std::min<int64_t>(cfg.index_topk, p_end / 4)) * 8;
    expect += uint64_t(cfg.num_attention_heads) * uint64_t(1 + cfg.head_dim) * 4;
  }
  if (v4rt::testing::world_rank() == 0) std::printf("  sp2 decode step: %llu bytes sent per rank (analytic %llu)\n",
                                                    static_cast<unsigned long long>(got.sp), static_cast<unsigned long long>(expect));
  EXPECT_EQ(got.sp, expect);
}

}  // namespace
}  // namespace v4rt::model
