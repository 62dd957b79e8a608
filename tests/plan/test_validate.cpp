// SPDX-License-Identifier: MIT
// Validation and fit of the planner against measured points, on synthetic points whose answer is
// known: per-family constants are recovered from points generated with them, the ±25% check
// passes and fails where it must, fit points are never counted, and the CSV layouts parse.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/check.h"
#include "launch/plan/validate.h"
#include "model/presets.h"

namespace v4rt::launch::plan {
namespace {

GpuSpec h200() { return load_gpu_spec("h200", default_config_dir()); }
model::ModelConfig preset(const std::string& name) { return model::preset_config(name); }
const ModelResolver kModels = [](const std::string& m) { return preset(m); };
const GpuResolver kGpus = [](const std::string&) { return h200(); };

// Ground truth: every family at its own efficiency, one launch latency for all (a family measured
// at one shape keeps the latency of `other`, so only then is its efficiency exactly recoverable).
Calibration truth() {
  Calibration c;
  const double eff[kNumOpFamilies] = {0.2, 0.9, 0.1, 0.002, 0.05, 0.08, 0.01, 1.0};
  for (int i = 0; i < kNumOpFamilies; ++i) c.families[size_t(i)] = {true, eff[i], 4e-6};
  return c;
}

// A point of `v4rt bench step` (1 GPU, N layers, sequences one after another, F32 state) whose
// per-family times follow `t` exactly.
MeasuredPoint synthetic(const std::string& model, int64_t batch, int64_t context, const Calibration& t) {
  MeasuredPoint p;
  p.file = "synthetic";
  p.model = model;
  p.gpu = "h200";
  p.layers = 2;
  p.context = context;
  p.batch = batch;
  p.kv_format = KvFormat::kF32;
  p.batching = Batching::kSequential;
  const StepOps ops = decode_step_ops(with_layers(preset(model), 2), h200(), parallel::Layout{}, context, 1, 1, p.kv_format);
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const double ms = double(batch) * family_time_s(ops[size_t(i)], h200(), t.families[size_t(i)], t) * 1e3;
    p.ops.push_back({op_family_name(OpFamily(i)), ops[size_t(i)].launches * double(batch), ms, 0, 0});
    p.step_ms += ms;
  }
  return p;
}

std::vector<MeasuredPoint> grid(const Calibration& t) {
  std::vector<MeasuredPoint> pts;
  for (int64_t ctx : {4096, 131072, 1048576})
    for (int64_t b : {1, 4}) pts.push_back(synthetic("flash", b, ctx, t));
  pts.push_back(synthetic("pro", 1, 4096, t));
  pts.push_back(synthetic("pro", 1, 1048576, t));
  return pts;
}

TEST(PlanValidate, OpCountsOfOneSequenceMatchTheShapes) {
  // Independent of the cost code: Flash, 2 layers, one sequence.
  const model::ModelConfig c = with_layers(preset("flash"), 2);
  ASSERT_EQ(c.compress_ratio(0), 4);
  ASSERT_EQ(c.compress_ratio(1), 128);
  const StepOps ops = decode_step_ops(c, h200(), parallel::Layout{}, 1048576, 1, 1, KvFormat::kF32);
  const OpCost& gate = ops[size_t(OpFamily::kGate)];
  EXPECT_DOUBLE_EQ(gate.bytes, 2 * (256.0 * 4096 * 2 + 4096 * 2));  // bf16 [256, 4096] + x, per layer
  EXPECT_DOUBLE_EQ(gate.launches, 2);
  // Experts: 6 distinct FP4 experts per layer, w1/w3 [2048, 4096] and w2 [4096, 2048], each e2m1
  // packed + one e8m0 per 32 inputs.
  const double expert = 2 * (2048.0 * 4096 / 2 + 2048.0 * 4096 / 32) + (4096.0 * 2048 / 2 + 4096.0 * 2048 / 32);
  EXPECT_NEAR(ops[size_t(OpFamily::kExperts)].bytes, 2 * 6 * expert, 1e-3 * expert);
  // Indexer (CSA layer only): 262144 F32 keys of 128 + an f32 score each written and read.
  EXPECT_DOUBLE_EQ(ops[size_t(OpFamily::kIndexer)].bytes, 262144.0 * (128 * 4 + 8));
  // Attention: CSA 128 window + 512 top-k, HCA 128 + 8192 entries, 512-d F32.
  EXPECT_DOUBLE_EQ(ops[size_t(OpFamily::kAttention)].bytes, (128.0 + 512 + 128 + 8192) * 512 * 4);
  // Head: bf16 [129280, 4096].
  EXPECT_GT(ops[size_t(OpFamily::kHead)].bytes, 129280.0 * 4096 * 2);
  EXPECT_LT(ops[size_t(OpFamily::kHead)].bytes, 129280.0 * 4096 * 2 * 1.01);
}

TEST(PlanValidate, SequentialBatchIsBTimesOneSequence) {
  const model::ModelConfig c = with_layers(preset("flash"), 2);
  const Calibration t = truth();
  const double one = decode_step_time(c, h200(), t, {1, 1}, parallel::Layout{}, 131072, 1, KvFormat::kF32,
                                      Batching::kSequential).total();
  const double four = decode_step_time(c, h200(), t, {1, 1}, parallel::Layout{}, 131072, 4, KvFormat::kF32,
                                       Batching::kSequential).total();
  const double batched = decode_step_time(c, h200(), t, {1, 1}, parallel::Layout{}, 131072, 4, KvFormat::kF32,
                                          Batching::kBatched).total();
  EXPECT_NEAR(four, 4 * one, 1e-12);
  EXPECT_LT(batched, four);  // weights read once for the 4 sequences
}

TEST(PlanValidate, FitRecoversKnownConstantsAndValidatesTheRest) {
  const Calibration t = truth();
  const std::vector<MeasuredPoint> pts = grid(t);
  const PointFilter filter = parse_point_filter("model=flash,batch=1");
  std::vector<MeasuredPoint> subset;
  for (const MeasuredPoint& p : pts)
    if (filter.matches(p)) subset.push_back(p);
  ASSERT_EQ(subset.size(), 3u);
  std::ostringstream log;
  const Calibration fit = fit_calibration(subset, kModels, kGpus, Calibration{}, log);
  for (int i = 0; i < kNumOpFamilies; ++i) {
    SCOPED_TRACE(op_family_name(OpFamily(i)));
    ASSERT_TRUE(fit.families[size_t(i)].fitted);
    EXPECT_NEAR(fit.families[size_t(i)].launch_s, 4e-6, 1e-9) << log.str();
    if (i != int(OpFamily::kOther)) {
      EXPECT_NEAR(fit.families[size_t(i)].efficiency, t.families[size_t(i)].efficiency,
                  1e-6 * t.families[size_t(i)].efficiency) << log.str();
    }
  }
  ASSERT_EQ(fit.fitted_on.size(), 3u);
  std::ostringstream out;
  const ValidationSummary s = print_validation(out, pts, kModels, kGpus, fit, 0.25, true);
  EXPECT_EQ(s.calibration, 3) << out.str();
  EXPECT_EQ(s.validated, 5) << out.str();
  EXPECT_EQ(s.passed, 5) << out.str();
  EXPECT_EQ(s.failed, 0) << out.str();
  EXPECT_NE(out.str().find("(fit)"), std::string::npos);
}

TEST(PlanValidate, TwentyFivePercentCheckPassesAndFails) {
  const Calibration t = truth();
  MeasuredPoint fit_point = synthetic("flash", 1, 4096, t);
  MeasuredPoint slow = synthetic("pro", 1, 1048576, t), close = slow;
  const MeasuredPoint exact = synthetic("pro", 1, 524288, t);  // error 0: PASS
  const double pred = predict_point(slow, kModels, kGpus, t).total() * 1e3;
  ASSERT_NEAR(pred, slow.step_ms, 1e-9 * pred);
  slow.step_ms = pred * 1.5;    // error -33.3%: must FAIL
  close.step_ms = pred / 1.2;   // error +20.0%: PASS
  Calibration calib = t;
  calib.fitted_on = {fit_point.key()};
  std::ostringstream out;
  const ValidationSummary s = print_validation(out, {fit_point, slow, close, exact}, kModels, kGpus, calib, 0.25, false);
  EXPECT_EQ(s.calibration, 1);
  EXPECT_EQ(s.validated, 3);
  EXPECT_EQ(s.failed, 1) << out.str();
  EXPECT_EQ(s.passed, 2) << out.str();
  EXPECT_NE(out.str().find("-33.3%  FAIL"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("+20.0%  PASS"), std::string::npos) << out.str();
  // Closer tolerance: the +20% point fails too.
  std::ostringstream strict;
  EXPECT_EQ(print_validation(strict, {slow, close}, kModels, kGpus, calib, 0.10, false).failed, 2);
}

TEST(PlanValidate, TotalsOnlyFitOneEfficiencyForAll) {
  // CPU-like points without a per-op breakdown: step = launches x 30 us + roofline / 0.05.
  Calibration t;
  for (FamilyCalibration& f : t.families) f = {true, 0.05, 30e-6};
  std::vector<MeasuredPoint> pts;
  for (int64_t ctx : {512, 4096, 65536}) {
    MeasuredPoint p = synthetic("tiny", 1, ctx, t);
    p.layers = 2;
    p.ops.clear();
    pts.push_back(p);
  }
  std::ostringstream log;
  const Calibration fit = fit_calibration(pts, kModels, kGpus, Calibration{}, log);
  for (const FamilyCalibration& f : fit.families) {
    EXPECT_NEAR(f.efficiency, 0.05, 1e-6) << log.str();
    EXPECT_NEAR(f.launch_s, 30e-6, 1e-9) << log.str();
  }
}

TEST(PlanValidate, CalibrationYamlRoundTrip) {
  Calibration c = truth();
  c.fitted_on = {"flash L2 b1 ctx4096 h200 1x1 tp1 sp1 ep1 dp1 f32 sequential"};
  c.source = "synthetic";
  c.hbm_fraction = 0.7;
  const Calibration back = parse_calibration(calibration_yaml(c), "roundtrip.yaml");
  EXPECT_EQ(back.fitted_on, c.fitted_on);
  EXPECT_EQ(back.source, "synthetic");
  EXPECT_DOUBLE_EQ(back.hbm_fraction, 0.7);
  for (int i = 0; i < kNumOpFamilies; ++i) {
    EXPECT_TRUE(back.families[size_t(i)].fitted);
    EXPECT_NEAR(back.families[size_t(i)].efficiency, c.families[size_t(i)].efficiency, 1e-6);
    EXPECT_NEAR(back.families[size_t(i)].launch_s, 4e-6, 1e-11);
  }
  EXPECT_THROW(parse_calibration("families: {linear: {efficiency: 2}}\n", "bad.yaml"), Error);
  try {
    parse_calibration("families: {matmul: {efficiency: 0.5}}\n", "bad.yaml");
    FAIL() << "unknown family accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.yaml: families: unknown op family 'matmul'"), std::string::npos);
  }
}

TEST(PlanValidate, ReadsLongAndWideCsv) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string long_path = (dir / "v4rt_points_long.csv").string();
  {
    std::ofstream f(long_path);
    f << "# comment line\n"
         "model,layers,batch,context,kv_format,batching,op,calls,ms,bytes,flops\n"
         "flash,2,1,1048576,f32,sequential,step,,5.375,,\n"
         "flash,2,1,1048576,f32,sequential,moe_gate,2,1.750,4.2e6,\n"
         "flash,2,1,1048576,f32,sequential,\"rms_norm, rope, rest\",36,0.35,,\n"
         "pro,2,1,1048576,f32,sequential,step,,10.20,,\n";
  }
  const auto pts = read_points_csv(long_path, PointDefaults{});
  ASSERT_EQ(pts.size(), 2u);
  EXPECT_DOUBLE_EQ(pts[0].step_ms, 5.375);
  ASSERT_EQ(pts[0].ops.size(), 2u);
  EXPECT_EQ(pts[0].ops[1].name, "rms_norm, rope, rest");
  EXPECT_EQ(op_family_of_kernel(pts[0].ops[1].name, preset("flash")), OpFamily::kOther);
  EXPECT_EQ(op_family_of_kernel("linear bf16 129280x4096", preset("flash")), OpFamily::kHead);
  EXPECT_EQ(op_family_of_kernel("linear fp8 1024x4096", preset("flash")), OpFamily::kLinear);
  EXPECT_EQ(op_family_of_kernel("topk", preset("flash")), OpFamily::kIndexer);
  EXPECT_EQ(pts[0].gpu, "h200");
  EXPECT_EQ(pts[0].layers, 2);
  EXPECT_EQ(pts[0].kv_format, KvFormat::kF32);
  EXPECT_EQ(pts[1].model, "pro");
  EXPECT_TRUE(pts[1].ops.empty());
  EXPECT_TRUE(parse_point_filter("model=pro|tiny,context=1048576").matches(pts[1]));
  EXPECT_FALSE(parse_point_filter("model=pro,batch=4").matches(pts[1]));
  EXPECT_THROW(parse_point_filter("colour=red"), Error);

  const std::string wide_path = (dir / "v4rt_points_wide.csv").string();
  {
    std::ofstream f(wide_path);
    f << "source,model,gpu,nodes,gpus_per_node,tp,sp,ep,dp,context,batch,kv_format,step_ms,batching\n"
         "predicted,tiny,cpu,1,2,2,1,1,1,512,1,compact,3.0,batched\n"
         "measured,tiny,cpu,1,2,2,1,1,1,512,1,compact,12.5,sequential\n"
         "measured,tiny,cpu,1,2,2,1,1,1,512,1,compact,x,sequential\n";
  }
  try {
    read_points_csv(wide_path, PointDefaults{});
    FAIL() << "bad number accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("v4rt_points_wide.csv:4: column 'step_ms' is not a number: 'x'"),
              std::string::npos) << e.what();
  }
  {
    std::ofstream f(wide_path);
    f << "source,model,gpu,nodes,gpus_per_node,tp,sp,ep,dp,context,batch,kv_format,step_ms,batching\n"
         "predicted,tiny,cpu,1,2,2,1,1,1,512,1,compact,3.0,batched\n"
         "measured,tiny,cpu,1,2,2,1,1,1,512,1,compact,12.5,sequential\n";
  }
  const auto wide = read_points_csv(wide_path, PointDefaults{});
  ASSERT_EQ(wide.size(), 1u);  // the predicted row is skipped
  EXPECT_DOUBLE_EQ(wide[0].step_ms, 12.5);
  EXPECT_EQ(wide[0].gpu, "cpu");
  EXPECT_EQ(wide[0].layout.tp, 2);
  EXPECT_EQ(wide[0].gpus_per_node, 2);
  std::filesystem::remove(long_path);
  std::filesystem::remove(wide_path);
}


TEST(PlanValidate, ReadsBenchStepNames) {
  // The header `v4rt bench step` writes: preset, op_family, step_ms on every row, a total row.
  const std::string path = (std::filesystem::temp_directory_path() / "v4rt_points_bench.csv").string();
  {
    std::ofstream f(path);
    f << "# v4rt bench step\n"
         "preset,layers,batch,context,step_ms,op_family,calls,ms,bytes,flops,roofline_ms\n"
         "flash,2,4,4096,6.5733,\"step\",4,6.5733,0,0,0.0\n"
         "flash,2,4,4096,6.5733,\"moe_gate\",8,0.1466,16908288,16777216,0.00393\n"
         "flash,2,4,4096,6.5733,\"total (op time)\",0,6.6666,0,0,1.49739\n"
         "pro,2,1,4096,2.6405,\"hc_pre\",4,0.08,0,0,0\n";
  }
  PointDefaults d;
  d.kv_format = KvFormat::kF32;
  const auto pts = read_points_csv(path, d);
  ASSERT_EQ(pts.size(), 2u);
  EXPECT_EQ(pts[0].model, "flash");
  EXPECT_EQ(pts[0].batch, 4);
  EXPECT_DOUBLE_EQ(pts[0].step_ms, 6.5733);
  ASSERT_EQ(pts[0].ops.size(), 1u);  // the total row is not an op
  EXPECT_EQ(pts[0].ops[0].name, "moe_gate");
  EXPECT_EQ(pts[0].kv_format, KvFormat::kF32);
  EXPECT_DOUBLE_EQ(pts[1].step_ms, 2.6405);  // from the step_ms column, no step row
  {
    std::ofstream f(path);
    f << "preset,layers,batch,context,step_ms,op_family,calls,ms\n"
         "flash,2,1,4096,1.5,step,1,1.7\n";
  }
  EXPECT_THROW(read_points_csv(path, d), Error);  // the step row disagrees with step_ms
  std::filesystem::remove(path);
}

// The GPU grid in docs/data (when present): every point has a step time and a per-op table whose
// times add up to within 10% of the step.
TEST(PlanValidate, GpuPointsFileParses) {
  const std::string path = std::string(V4RT_SOURCE_DIR) + "/docs/data/gpu_points_h200.csv";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  PointDefaults d;
  d.kv_format = KvFormat::kF32;
  const auto pts = read_points_csv(path, d);
  ASSERT_FALSE(pts.empty());
  for (const MeasuredPoint& p : pts) {
    SCOPED_TRACE(p.key());
    EXPECT_GT(p.step_ms, 0);
    ASSERT_FALSE(p.ops.empty());
    double sum = 0;
    for (const MeasuredOp& op : p.ops) sum += op.ms;
    EXPECT_NEAR(sum, p.step_ms, 0.1 * p.step_ms);
    EXPECT_NO_THROW(predict_point(p, kModels, kGpus, Calibration{}));
  }
}

}  // namespace
}  // namespace v4rt::launch::plan
