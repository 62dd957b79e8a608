// SPDX-License-Identifier: MIT
// Planner: layouts that cannot work are rejected with the reason; memory fit against figures
// computed here from the spec's numbers; properties of the cost model that must hold.
#include <gtest/gtest.h>

#include <algorithm>

#include "common/check.h"
#include "launch/plan/planner.h"
#include "model/presets.h"

namespace v4rt::launch::plan {
namespace {

constexpr int64_t kMillion = 1 << 20;
constexpr double kGiB = double(1ull << 30), kMiB = double(1 << 20);

GpuSpec gpu(const std::string& name) { return load_gpu_spec(name, default_config_dir()); }

std::string reason(const model::ModelConfig& c, parallel::Layout l, Cluster cluster) {
  std::string all;
  for (const std::string& s : layout_problems(c, l, cluster)) all += s + "\n";
  return all;
}

TEST(Planner, HardwareTablesLoad) {
  for (const char* name : {"h200", "h100", "b200"}) {
    const GpuSpec g = gpu(name);
    EXPECT_EQ(g.name, name);
    EXPECT_GT(g.hbm_bytes, 50e9);
    EXPECT_GT(g.fp8_flops, g.bf16_flops);
    EXPECT_GT(g.nvlink_bytes_per_s, g.internode_bytes_per_s);
  }
  EXPECT_DOUBLE_EQ(gpu("h200").hbm_bytes_per_s, 4.8e12);
  EXPECT_THROW(gpu("a100"), Error);
}

TEST(Planner, BadYamlNamesFileAndKey) {
  try {
    parse_calibration("hbm_fraction: 0.7\nhbm_speed: 3\n", "calib.yaml");
    FAIL() << "unknown key accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("calib.yaml: unknown key 'hbm_speed'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_calibration("flop_fraction: 1.5\n", "c.yaml"), Error);
  EXPECT_THROW(parse_gpu_spec("name: x\nhbm_bytes: 1\n", "x.yaml"), Error);  // missing figures
  const Calibration c = parse_calibration("all_to_all_gb_per_s: 40\nlaunch_overhead_us_per_layer: 5\n", "c");
  EXPECT_DOUBLE_EQ(c.all_to_all_bytes_per_s, 40e9);
  EXPECT_DOUBLE_EQ(c.launch_overhead_s_per_layer, 5e-6);
}

TEST(Planner, InvalidLayoutsRejectedWithReason) {
  const model::ModelConfig flash = model::preset_config("flash");
  const Cluster two_nodes{2, 8};
  EXPECT_EQ(reason(flash, {8, 2, 16, 1}, two_nodes), "");
  EXPECT_NE(reason(flash, {8, 1, 16, 1}, two_nodes).find("world 16 != dp*sp*tp = 1*1*8 = 8"), std::string::npos);
  EXPECT_NE(reason(flash, {16, 1, 16, 1}, two_nodes).find("o_groups 8 % tp 16 != 0"), std::string::npos);
  EXPECT_NE(reason(flash, {16, 1, 16, 1}, two_nodes).find("tp 16 > 8 GPUs per node"), std::string::npos);
  EXPECT_NE(reason(flash, {1, 16, 12, 1}, two_nodes).find("n_routed_experts 256 % ep 12 != 0"), std::string::npos);
  EXPECT_NE(reason(flash, {3, 1, 1, 1}, Cluster{1, 3}).find("num_attention_heads 64 % tp 3 != 0"), std::string::npos);
  EXPECT_NE(reason(flash, {1, 1, 32, 16}, two_nodes).find("world 16 % ep 32 != 0"), std::string::npos);

  // Through predict(): the reason lands in the row.
  PlanRequest req;
  req.cluster = two_nodes;
  req.context = 4096;
  const Prediction p = predict(flash, gpu("h200"), Calibration{}, req, {16, 1, 16, 1});
  EXPECT_NE(p.rejected.find("o_groups"), std::string::npos);
}

TEST(Planner, DoesNotFitNamesTheBytes) {
  // Pro (865 GB) on 8 x H100 (80 GB): the experts alone need > 100 GB per GPU.
  const model::ModelConfig pro = model::preset_config("pro");
  PlanRequest req;
  req.cluster = {1, 8};
  req.context = 4096;
  const Prediction p = predict(pro, gpu("h100"), Calibration{}, req, {8, 1, 8, 1});
  EXPECT_EQ(p.rejected.rfind("does not fit: weights ", 0), 0u) << p.rejected;
  EXPECT_NE(p.rejected.find("GiB per GPU"), std::string::npos);
  // A batch larger than what fits is rejected with the bytes it would need.
  PlanRequest big = req;
  big.cluster = {2, 8};
  big.context = kMillion;
  big.batch = 100000;
  const Prediction q = predict(pro, gpu("h200"), Calibration{}, big, {8, 2, 16, 1});
  EXPECT_EQ(q.rejected.rfind("does not fit: 100000 sequences of 1048576 tokens", 0), 0u) << q.rejected;
}

TEST(Planner, ProFitsOneMillionTokenSequencesOn16H200) {
  // Independent count from spec numbers: Pro compact KV 5031.4375 B/token (§8.2) x 2^20, and what
  // the runtime keeps beside the entries: F32 window tails 61 x (127 + 32) x 512 x 4 B (the window and
  // its table's slack, model::window_table_rows), compressor buffers
  // 30 x 160 KiB + 31 x 1 MiB; weights 864,704,792,696 B of which the routed experts (62 blocks x
  // 384 x expert) are split over ep.
  const model::ModelConfig pro = model::preset_config("pro");
  const GpuSpec h200 = gpu("h200");
  const Calibration calib;
  PlanRequest req;
  req.cluster = {2, 8};
  req.context = kMillion;
  const parallel::Layout lay{1, 8, 16, 2};
  const Prediction p = predict(pro, h200, calib, req, lay);
  ASSERT_EQ(p.rejected, "");
  // (The compact rows' pool blocks add 8 bytes of block table per 64 rows: 30 x 2 x 4,096 + 31 x 128 blocks.)
  const double tables = 8.0 * (30 * 2 * 4096 + 31 * 128);
  const double kv_gpu = (5031.4375 * kMillion + tables) / 8 + 61 * 159 * 512 * 4.0 + (30 * 160 + 31 * 1024) * 1024.0;
  EXPECT_NEAR(double(p.kv_bytes_per_seq_gpu), kv_gpu, 1.0);
  const WeightBytes w = weight_bytes(pro);
  const double weights = double(w.total() - w.main.experts - w.mtp.experts) +
                         double(w.main.experts + w.mtp.experts) / 16;
  EXPECT_NEAR(p.weight_bytes_per_gpu, weights, 1.0);
  const int64_t per_replica = int64_t((h200.hbm_bytes - weights - calib.runtime_reserve_bytes) / kv_gpu);
  EXPECT_EQ(p.max_seqs, 2 * per_replica);
  EXPECT_GT(p.max_seqs, 0);

  // The TP-replicated counterpart keeps a whole copy of every sequence on each of the 8 GPUs.
  const auto rep = tp_replicated_counterpart(pro, lay, req.cluster);
  ASSERT_TRUE(rep.has_value());
  EXPECT_EQ(rep->tp, 8);
  EXPECT_EQ(rep->sp, 1);
  const Prediction r = predict(pro, h200, calib, req, *rep);
  ASSERT_EQ(r.rejected, "");
  EXPECT_NEAR(r.kv_bytes_per_seq_gpu / kGiB, 4.91 + (61 * 159 * 512 * 4.0 / kMiB + 35.69) / 1024, 0.01);
  EXPECT_LT(r.max_seqs, p.max_seqs);
}

TEST(Planner, CostModelProperties) {
  const model::ModelConfig flash = model::preset_config("flash");
  const GpuSpec h200 = gpu("h200");
  const Cluster one{1, 8};
  Calibration calib;
  const parallel::Layout tp8{8, 1, 8, 1}, sp8{1, 8, 8, 1};
  auto step = [&](const parallel::Layout& l, int64_t ctx, int64_t b, const Calibration& c) {
    return decode_step_time(flash, h200, c, one, l, ctx, b, KvFormat::kCompact);
  };
  // Memory time is linear in 1/hbm_fraction; compute time in 1/flop_fraction.
  Calibration half = calib;
  half.hbm_fraction = calib.hbm_fraction / 2;
  half.flop_fraction = calib.flop_fraction / 2;
  EXPECT_NEAR(step(tp8, kMillion, 4, half).memory, 2 * step(tp8, kMillion, 4, calib).memory, 1e-12);
  EXPECT_NEAR(step(tp8, kMillion, 4, half).compute, 2 * step(tp8, kMillion, 4, calib).compute, 1e-12);
  // Longer contexts and bigger batches cost more; a bigger batch still raises throughput.
  EXPECT_GT(step(tp8, kMillion, 4, calib).total(), step(tp8, 65536, 4, calib).total());
  EXPECT_GT(step(tp8, kMillion, 16, calib).total(), step(tp8, kMillion, 4, calib).total());
  EXPECT_GT(16 / step(tp8, kMillion, 16, calib).total(), 4 / step(tp8, kMillion, 4, calib).total());
  // TP has an all-reduce, SP has none; SP has top-k exchange + merge, TP has none.
  EXPECT_GT(step(tp8, 65536, 4, calib).tp, 0);
  EXPECT_EQ(step(tp8, 65536, 4, calib).sp, 0);
  EXPECT_GT(step(sp8, 65536, 4, calib).sp, 0);
  // One 1M-token sequence: SP splits its indexer scan and KV reads over 8 GPUs (a single-GPU
  // replica, dp=8, does them alone); prefill is split the same way.
  const parallel::Layout dp8{1, 1, 8, 8};
  EXPECT_LT(step(sp8, kMillion, 1, calib).compute, step(dp8, kMillion, 1, calib).compute / 2);
  EXPECT_LT(step(sp8, kMillion, 1, calib).memory, step(dp8, kMillion, 1, calib).memory);
  EXPECT_LT(prefill_time(flash, h200, calib, one, sp8, kMillion, KvFormat::kCompact).total(),
            prefill_time(flash, h200, calib, one, dp8, kMillion, KvFormat::kCompact).total() / 2);
  // Latency of one collective per layer dominates tiny batches: launch + latency > 0 at batch 1.
  EXPECT_GT(step(tp8, 128, 1, calib).tp, flash.num_hidden_layers * h200.nvlink_latency_s * 0.99);
  // Prefill grows super-linearly at long contexts (the indexer is O(L^2)).
  const double p64k = prefill_time(flash, h200, calib, one, tp8, 65536, KvFormat::kCompact).total();
  const double p1m = prefill_time(flash, h200, calib, one, tp8, kMillion, KvFormat::kCompact).total();
  EXPECT_GT(p1m, 16 * p64k);
}

TEST(Planner, RecommendationMeetsLatencyTarget) {
  const model::ModelConfig flash = model::preset_config("flash");
  PlanRequest req;
  req.cluster = {1, 8};
  req.context = 131072;
  req.latency_target_s = 0.050;
  const Plan plan = make_plan(flash, gpu("h200"), Calibration{}, req, std::nullopt);
  ASSERT_GE(plan.best, 0);
  const Prediction& best = plan.rows[size_t(plan.best)];
  EXPECT_LE(best.decode.total(), req.latency_target_s);
  EXPECT_GE(best.batch, 1);
  EXPECT_LE(best.batch, best.max_seqs);
  for (const Prediction& p : plan.rows) {
    if (p.rejected.empty() && p.meets_latency) {
      EXPECT_LE(p.tokens_per_s, best.tokens_per_s);
    }
  }
  // Every candidate has dp*sp*tp = world.
  for (const parallel::Layout& l : candidate_layouts(req.cluster)) EXPECT_EQ(l.world(), 8);
}

}  // namespace
}  // namespace v4rt::launch::plan
