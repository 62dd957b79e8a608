// SPDX-License-Identifier: MIT
// Layout validation messages, shard plans and SP entry ownership (no MPI needed).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "parallel/layout.h"
#include "parallel/sp.h"
#include "tests/parallel/sp_reference.h"

namespace v4rt::parallel {
namespace {

using namespace v4rt::parallel::testing;

ModelDims flash_dims(int world) {  // spec §1.1, V4-Flash
  ModelDims d;
  d.num_heads = 64;
  d.head_dim = 512;
  d.o_groups = 8;
  d.o_lora_rank = 1024;
  d.index_n_heads = 64;
  d.index_head_dim = 128;
  d.n_routed_experts = 256;
  d.q_lora_rank = 1024;
  d.hidden = 4096;
  d.world_size = world;
  return d;
}

std::string error_of(const Layout& layout, const ModelDims& dims) {
  try {
    validate(layout, dims);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Layout, AcceptsFlashLayouts) {
  EXPECT_EQ(error_of({.tp = 8, .sp = 1, .ep = 8, .dp = 1}, flash_dims(8)), "");
  EXPECT_EQ(error_of({.tp = 2, .sp = 4, .ep = 8, .dp = 1}, flash_dims(8)), "");
  EXPECT_EQ(error_of({.tp = 1, .sp = 1, .ep = 1, .dp = 1}, flash_dims(1)), "");
  EXPECT_EQ(error_of({.tp = 4, .sp = 2, .ep = 16, .dp = 2}, flash_dims(16)), "");
}

TEST(Layout, NamesEveryViolation) {
  const std::string tp3 = error_of({.tp = 3, .sp = 1, .ep = 1, .dp = 1}, flash_dims(3));
  EXPECT_NE(tp3.find("parallel.tp = 3 does not divide num_attention_heads 64"), std::string::npos) << tp3;
  EXPECT_NE(tp3.find("parallel.tp = 3 does not divide o_groups 8"), std::string::npos) << tp3;
  const std::string world = error_of({.tp = 2, .sp = 2, .ep = 4, .dp = 2}, flash_dims(4));
  EXPECT_NE(world.find("world size 4 != dp*sp*tp = 8"), std::string::npos) << world;
  const std::string ep = error_of({.tp = 1, .sp = 3, .ep = 3, .dp = 1}, flash_dims(3));
  EXPECT_NE(ep.find("parallel.ep = 3 does not divide n_routed_experts 256"), std::string::npos) << ep;
  const std::string ep_world = error_of({.tp = 4, .sp = 1, .ep = 8, .dp = 1}, flash_dims(4));
  EXPECT_NE(ep_world.find("parallel.ep = 8 does not divide the world size 4"), std::string::npos)
      << ep_world;
  const std::string zero = error_of({.tp = 0, .sp = 1, .ep = 1, .dp = 1}, flash_dims(1));
  EXPECT_NE(zero.find("parallel.tp = 0 must be >= 1"), std::string::npos) << zero;
  // tp = 16 divides 64 heads but not 8 output groups.
  const std::string groups = error_of({.tp = 16, .sp = 1, .ep = 16, .dp = 1}, flash_dims(16));
  EXPECT_NE(groups.find("does not divide o_groups 8"), std::string::npos) << groups;
}

TEST(Layout, FlagsSplitFp8Blocks) {
  ModelDims d = flash_dims(2);
  d.index_head_dim = 96;  // one indexer head of 96 rows per rank: not a whole 128-row block
  d.index_n_heads = 2;
  const std::string e = error_of({.tp = 2, .sp = 1, .ep = 2, .dp = 1}, d);
  EXPECT_NE(e.find("splits indexer.wq_b rows"), std::string::npos) << e;
}

// An impossible layout read from a runtime YAML is ONE line naming the file and every violated
// key (the CLI prints an Error as a single line); layout_violations() lists the same rules.
TEST(Layout, OneLineNamingTheFileAndKeys) {
  Layout l{.tp = 3, .sp = 1, .ep = 5, .dp = 1};
  l.source = "configs/bad.yaml";
  const std::string e = error_of(l, flash_dims(3));
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_EQ(e.rfind("configs/bad.yaml: parallel layout tp=3 sp=1 ep=5 dp=1 is invalid: ", 0), 0u) << e;
  const std::vector<std::string> v = layout_violations(l, flash_dims(3));
  ASSERT_GE(v.size(), 3u);
  for (const std::string& rule : v) {
    EXPECT_NE(e.find(rule), std::string::npos) << rule << " missing from: " << e;
    EXPECT_EQ(rule.find('\n'), std::string::npos) << rule;
  }
  EXPECT_NE(e.find("parallel.tp = 3 does not divide num_attention_heads 64; "), std::string::npos) << e;
  EXPECT_NE(e.find("parallel.ep = 5 does not divide n_routed_experts 256"), std::string::npos) << e;
  // Several sizes below 1 are all named, still on one line.
  Layout zero{.tp = 0, .sp = 1, .ep = 1, .dp = 1, .sp_block = 0};
  const std::string z = error_of(zero, flash_dims(1));
  EXPECT_EQ(z.find('\n'), std::string::npos) << z;
  EXPECT_NE(z.find("parallel.tp = 0 must be >= 1; parallel.sp_block = 0 must be >= 1"), std::string::npos) << z;
  // A valid layout has no violations.
  EXPECT_TRUE(layout_violations({.tp = 8, .sp = 1, .ep = 8, .dp = 1}, flash_dims(8)).empty());
}

TEST(ShardPlan, CoversEveryTensorOnce) {
  const Layout layout{.tp = 4, .sp = 2, .ep = 8, .dp = 1};
  const ModelDims dims = flash_dims(8);
  std::vector<int> head_owners(64, 0), expert_owners(256, 0);
  for (int r = 0; r < 8; ++r) {
    const ShardPlan plan = make_shard_plan(layout, dims, r);
    EXPECT_EQ(plan.heads.size(), 16);
    EXPECT_EQ(plan.o_groups.size(), 2);
    EXPECT_EQ(plan.wq_b_rows.begin, plan.heads.begin * 512);
    EXPECT_EQ(plan.wo_a_rows.size(), 2048);
    EXPECT_EQ(plan.wo_b_cols.begin, plan.o_groups.begin * 1024);
    EXPECT_EQ(plan.index_heads.size(), 16);
    EXPECT_EQ(plan.index_wq_b_rows.size(), 16 * 128);
    EXPECT_EQ(plan.experts.size(), 32);
    // The heads of a rank's o-groups are exactly its heads (8 heads per group).
    EXPECT_EQ(plan.o_groups.begin * 8, plan.heads.begin);
    EXPECT_EQ(plan.sp_idx, (r / 4) % 2);
    if (plan.sp_idx == 0) {  // count each TP slice once
      for (int64_t h = plan.heads.begin; h < plan.heads.end; ++h) head_owners[size_t(h)]++;
    }
    for (int64_t e = plan.experts.begin; e < plan.experts.end; ++e) expert_owners[size_t(e)]++;
  }
  for (int c : head_owners) EXPECT_EQ(c, 1);
  for (int c : expert_owners) EXPECT_EQ(c, 1);
}

TEST(SpPartition, OwnershipIsAPartition) {
  for (int sp : {1, 2, 3, 4}) {
    for (int block : {1, 16, 64}) {
      for (int64_t n : {0, 1, 63, 64, 65, 300, 1000}) {
        int64_t total = 0;
        for (int idx = 0; idx < sp; ++idx) {
          const SpPartition part{.sp_size = sp, .sp_idx = idx, .block = block};
          const int64_t local = part.num_local(n);
          total += local;
          int64_t owned = 0;
          for (int64_t j = 0; j < n; ++j) owned += part.owns(j) ? 1 : 0;
          ASSERT_EQ(local, owned) << "sp " << sp << " idx " << idx << " block " << block << " n " << n;
          for (int64_t l = 0; l < local; ++l) {
            const int64_t g = part.to_global(l);
            ASSERT_TRUE(part.owns(g));
            ASSERT_EQ(part.to_local(g), l);
            if (l > 0) {
              ASSERT_GT(g, part.to_global(l - 1));  // local order = global order
            }
          }
        }
        ASSERT_EQ(total, n);
      }
    }
  }
}

TEST(SpTopk, ReferenceOrderAndPadding) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> scores = {1.f, 3.f, -inf, 3.f, 2.f, 1.f};
  int64_t out[7];
  topk_reference(scores, 7, out);
  const int64_t expect[7] = {1, 3, 4, 0, 5, -1, -1};
  for (int i = 0; i < 7; ++i) EXPECT_EQ(out[i], expect[i]) << i;
}

// Merging the partials of a split candidate set equals one partial over the whole set.
TEST(SpMerge, SplitEqualsWhole) {
  const int64_t d = 8, n = 40;
  std::vector<float> q(d), kv(size_t(n * d));
  for (int64_t i = 0; i < d; ++i) q[size_t(i)] = 0.1f * float(i % 5) - 0.2f;
  for (int64_t i = 0; i < n * d; ++i) kv[size_t(i)] = 0.05f * float((i * 37) % 29) - 0.6f;
  std::vector<int64_t> all(static_cast<size_t>(n)), a(static_cast<size_t>(n), -1), b(static_cast<size_t>(n), -1);
  for (int64_t i = 0; i < n; ++i) {
    all[size_t(i)] = i;
    (i % 3 == 0 ? a : b)[size_t(i)] = i;
  }
  const float sink = 0.3f;
  std::vector<float> whole(size_t(2 + d)), parts(size_t(2 * (2 + d))), o1(static_cast<size_t>(d)), o2(static_cast<size_t>(d));
  attention_partial(q.data(), kv.data(), all.data(), 1, n, d, 0.5f, whole.data());
  attention_partial(q.data(), kv.data(), a.data(), 1, n, d, 0.5f, parts.data());
  attention_partial(q.data(), kv.data(), b.data(), 1, n, d, 0.5f, parts.data() + 2 + d);
  merge_partials(whole.data(), 1, &sink, 1, 1, d, o1.data());
  merge_partials(parts.data(), 2, &sink, 1, 1, d, o2.data());
  for (int64_t i = 0; i < d; ++i) EXPECT_NEAR(o1[size_t(i)], o2[size_t(i)], 1e-6f * std::fabs(o1[size_t(i)]) + 1e-7f);
}

}  // namespace
}  // namespace v4rt::parallel
