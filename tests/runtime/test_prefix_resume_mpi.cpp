// SPDX-License-Identifier: MIT
// The prefix cache under mpirun (np 2: sp2, tp2, ep2; np 4: tp2 x sp2, sp4, dp2 x tp2) on golden
// tiny-a: every rank runs the same tree calls (same ids, same matches, same evictions) and stores
// its own payloads (SP ranks keep the entries they own, in blocks of 4). A request resumed from a stored point gives
// bit for bit the logits of the same layout recomputing without the cache (same chunk ends), and
// within 1e-5 of one rank (reference numerics). Under the official numerics with B = 256 and SP blocks of 64 entries a
// full tree block holds 64 or 0 of a rank's CSA rows, shared with the pool by reference.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/distributed.h"
#include "model/model.h"
#include "runtime/prefix_store.h"
#include "runtime/prefix_tree.h"
#include "tests/cluster/mpi_test.h"
#include "tests/golden_util.h"
#include "tests/model/test_mtp_util.h"
#include "tests/parallel/layout_util.h"

namespace v4rt::runtime {
namespace {

constexpr int64_t kBlockTokens = 128;

using model::testing::test_prompt;  // deterministic prompts over [2, vocab)

std::vector<float> last_logits(model::Model& m, model::SequenceState& seq, std::span<const int32_t> tokens) {
  model::StepChunk c;
  c.sequence = &seq;
  c.tokens = tokens;
  std::vector<std::vector<float>> out;
  m.step(std::span<const model::StepChunk>(&c, 1), &out);
  return out[0];
}

struct Shared {
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<kernels::Backend> backend;
};
Shared& shared() {
  static Shared s = [] {
    Shared out;
    out.ckpt = model::Checkpoint::open(v4rt::testing::golden_case_dir("tiny-a") + "/model");
    out.backend = kernels::make_cpu_backend();
    return out;
  }();
  return s;
}

// `system_tokens`: the prefix the second request shares (its boundary point).
void check_layout(const char* name, const parallel::Layout& layout, int system_tokens = 170,
                  int64_t block_tokens = kBlockTokens, model::Numerics numerics = model::Numerics::kReference) {
  if (v4rt::testing::world_size() != layout.world()) GTEST_SKIP() << name << " needs " << layout.world() << " ranks";
  SCOPED_TRACE(name);
  Shared& sh = shared();
  cluster::ProcessGroups groups = cluster::make_mpi_groups(parallel::group_shape(layout), v4rt::testing::kTestTimeoutS);
  model::ModelOptions options, one_rank;
  options.numerics = one_rank.numerics = numerics;
  options.parallel = model::make_parallel_context(layout, sh.ckpt->config(), *sh.backend, groups);
  auto m = model::Model::load(*sh.ckpt, options, *sh.backend);
  auto single = model::Model::load(*sh.ckpt, one_rank, *sh.backend);
  const int64_t vocab = m->config().vocab_size;

  PrefixTreeOptions o;
  o.block_tokens = block_tokens;
  set_model_byte_sizes(o, m->config(), model::ownership_of(options.parallel), m->kv_storage());
  PrefixTree tree(o);
  PrefixStore store(*m, block_tokens);

  const std::vector<int32_t> system = test_prompt(vocab, system_tokens, 1);  // mid CSA and HCA block
  int64_t expected_cached[] = {0, system_tokens, 0};
  for (int r = 0; r < 3; ++r) {
    std::vector<int32_t> prompt = system;
    const std::vector<int32_t> user = test_prompt(vocab, 40 + 9 * r, 10 + uint32_t(r));
    prompt.insert(prompt.end(), user.begin(), user.end());
    if (r == 2) prompt = test_prompt(vocab, 150, 99);  // unrelated
    const PrefixMatch match = tree.match(prompt);
    EXPECT_EQ(match.position, expected_cached[r]) << "request " << r;
    auto seq = match.position > 0 ? store.resume(match) : m->new_sequence();
    const std::vector<int64_t> boundaries = {system_tokens};
    const std::vector<int64_t> points = PrefixTree::plan_points(int64_t(prompt.size()), match.position, boundaries, 64);
    std::map<int64_t, model::TailSnapshot> snaps;
    int64_t pos = match.position;
    for (int64_t cut : points) {
      last_logits(*m, *seq, std::span<const int32_t>(prompt.data() + pos, size_t(cut - pos)));
      snaps.emplace(cut, model::snapshot_tail(*seq));
      pos = cut;
    }
    const std::vector<float> got = last_logits(*m, *seq, std::span<const int32_t>(prompt.data() + pos, prompt.size() - size_t(pos)));
    store.apply(tree.insert(prompt, points), snaps, *seq);
    EXPECT_LE(store.bytes(), tree.bytes()) << "the tree charges the rank that stores the most";

    // NOTE: under SP the chunking changes the last bits (a chunk before the first compressed entry
    // is attended whole on every rank, later ones merge partial outputs), so the exact reference is
    // the same layout without the cache, chunked where the cached request and this one cut.
    auto full = m->new_sequence();
    int64_t at = 0;
    for (int64_t cut : PrefixTree::plan_points(int64_t(prompt.size()), 0, boundaries, 64)) {
      last_logits(*m, *full, std::span<const int32_t>(prompt.data() + at, size_t(cut - at)));
      at = cut;
    }
    const std::vector<float> want = last_logits(*m, *full, std::span<const int32_t>(prompt.data() + at, prompt.size() - size_t(at)));
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
        << "request " << r << " rank " << v4rt::testing::world_rank() << ": resumed vs recompute, same layout";
    // NOTE: under the official numerics a last-bit difference of the SP merge can flip an FP8/FP4
    // rounding of a compressed row and with it the indexer's top-k, so one rank is no close
    // reference there (0.19 relative on request 0, which resumes nothing); the exact check above is.
    if (numerics != model::Numerics::kReference) continue;
    auto one = single->new_sequence();
    const std::vector<float> ref = last_logits(*single, *one, prompt);
    EXPECT_LE(v4rt::testing::rel_err(got.data(), ref.data(), got.size()), 1e-5) << "request " << r << " vs one rank";
  }
  EXPECT_EQ(tree.stats().hits, 1);
}

TEST(PrefixResumeMpi, Sp2) { check_layout("sp2", v4rt::testing::test_layout(1, 2, 1, 1)); }
// 700 shared tokens: 5 HCA entries, the fifth owned by rank 1, whose entry blocks 0..3 hold none
// of its HCA rows (a resume must look past blocks that hold nothing for its rank).
TEST(PrefixResumeMpi, Sp2LongPrefix) { check_layout("sp2, 700-token prefix", v4rt::testing::test_layout(1, 2, 1, 1), 700); }
// Compact rows, B = 256, SP blocks of 64: the CSA rows of the two full tree blocks are pool blocks
// shared by the tree and the resumed sequence (rank 0 owns block 0's, rank 1 block 1's; under sp4
// ranks 2 and 3 own none of them).
parallel::Layout sp_layout(int sp) {
  parallel::Layout l = v4rt::testing::test_layout(1, sp, 1, 1);
  l.sp_block = 64;
  return l;
}
TEST(PrefixResumeMpi, Sp2SharedBlocks) {
  check_layout("sp2, shared pool blocks", sp_layout(2), 700, 256, model::Numerics::kOfficial);
}
TEST(PrefixResumeMpi, Sp4SharedBlocks) {
  check_layout("sp4, shared pool blocks", sp_layout(4), 700, 256, model::Numerics::kOfficial);
}
TEST(PrefixResumeMpi, Tp2) { check_layout("tp2", v4rt::testing::test_layout(2, 1, 1, 1)); }
TEST(PrefixResumeMpi, Tp2Sp2) { check_layout("tp2 sp2", v4rt::testing::test_layout(2, 2, 1, 1)); }
TEST(PrefixResumeMpi, Sp4) { check_layout("sp4", v4rt::testing::test_layout(1, 4, 1, 1)); }
TEST(PrefixResumeMpi, Ep2) { check_layout("ep2 (dp2)", v4rt::testing::test_layout(1, 1, 2, 2)); }
TEST(PrefixResumeMpi, Dp2Tp2) { check_layout("dp2 tp2", v4rt::testing::test_layout(2, 1, 1, 2)); }

}  // namespace
}  // namespace v4rt::runtime
