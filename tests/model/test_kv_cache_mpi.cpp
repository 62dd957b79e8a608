// SPDX-License-Identifier: MIT
// The compact KV cache under sequence parallelism (mpirun, 2 and 4 ranks; docs/KV_CACHE.md): on
// golden tiny-a in the official numerics, each SP rank packs the new entries and keeps the runs it
// owns (blocks of 4 entries), scores and attends over its compact rows; the logits of a chunked
// prefill and decode steps equal, bit for bit on every rank, those of the same layout with F32
// rows.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "cluster/groups.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/distributed.h"
#include "model/model.h"
#include "tests/cluster/mpi_test.h"
#include "tests/golden_util.h"
#include "tests/parallel/layout_util.h"

namespace v4rt::model {
namespace {

struct Layouts {
  const char* name;
  parallel::Layout layout;
};

// Logits of 300 prompt tokens in chunks [0, 170) and [170, 300), then 5 single-token steps.
std::vector<float> run(Model& m, SequenceState& seq) {
  const int32_t vocab = int32_t(m.config().vocab_size);
  std::vector<int32_t> tokens;
  for (int32_t i = 0; i < 305; ++i) tokens.push_back(2 + (i * 7919 + 13) % (vocab - 2));
  std::vector<float> out;
  for (auto [b, e] : {std::pair{0, 170}, std::pair{170, 300}, std::pair{300, 301}, std::pair{301, 302},
                      std::pair{302, 303}, std::pair{303, 304}, std::pair{304, 305}}) {
    StepChunk c;
    c.sequence = &seq;
    c.tokens = std::span<const int32_t>(tokens.data() + b, size_t(e - b));
    c.all_logits = true;
    std::vector<std::vector<float>> lg;
    m.step(std::span<const StepChunk>(&c, 1), &lg);
    out.insert(out.end(), lg[0].begin(), lg[0].end());
  }
  return out;
}

class KvCacheSp : public ::testing::TestWithParam<Layouts> {};

TEST_P(KvCacheSp, CompactRowsGiveTheLogitsOfF32Rows) {
  const Layouts& c = GetParam();
  if (v4rt::testing::world_size() != c.layout.world()) GTEST_SKIP() << c.name << " needs " << c.layout.world() << " ranks";
  auto ckpt = Checkpoint::open(v4rt::testing::golden_case_dir("tiny-a") + "/model");
  auto backend = kernels::make_cpu_backend();
  cluster::ProcessGroups groups = cluster::make_mpi_groups(parallel::group_shape(c.layout), v4rt::testing::kTestTimeoutS);
  ModelOptions options;
  options.numerics = Numerics::kOfficial;
  options.parallel = make_parallel_context(c.layout, ckpt->config(), *backend, groups);
  auto m = Model::load(*ckpt, options, *backend);

  auto compact = m->new_sequence();
  ASSERT_EQ(compact->storage(), KvStorage::kCompact);
  SequenceState f32(m->config(), *backend, KvStorage::kF32);
  f32.set_ownership(ownership_of(m->parallel()));
  const std::vector<float> got = run(*m, *compact);
  const std::vector<float> want = run(*m, f32);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
      << c.name << " rank " << v4rt::testing::world_rank() << ": compact logits differ from F32 logits";
  // This rank holds only its own entries: fewer than all of them, the same count in both storages.
  const LayerState& csa = compact->layer(1);
  EXPECT_LT(csa.main.entries.rows(), csa.main.num_entries);
  EXPECT_EQ(csa.main.entries.rows(), f32.layer(1).main.entries.rows());
  EXPECT_EQ(csa.indexer.entries.rows(), f32.layer(1).indexer.entries.rows());
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvCacheSp,
                         ::testing::Values(Layouts{"sp2", v4rt::testing::test_layout(1, 2, 1, 1)},
                                           Layouts{"sp4", v4rt::testing::test_layout(1, 4, 1, 1)}),
                         [](const ::testing::TestParamInfo<Layouts>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace v4rt::model
