// SPDX-License-Identifier: MIT
// The full model on the CUDA backend against golden/tiny-a (logits of an independent fp32
// implementation), reference numerics, for each CudaBackendOptions::reference precision:
//  - kF32 (fp32 GEMMs on F32 weight copies, fp32 experts): 1e-4 relative Frobenius error, one
//    520-token prefill (per-layer residual errors printed), chunks 301 + 219 then 24 decode steps,
//    chunks of 64 then decode.
//  - kBf16Split (the default: bf16 weights and tensor cores, fp32 inputs as hi + lo bf16 terms,
//    fp32 experts): 2e-2 on the same runs.
//  - kBf16 (one bf16 rounding per GEMM input and expert intermediate): printed, bounded against
//    gross errors only. On this model single bf16 roundings flip MoE routing choices at the
//    score-routed layers and put the logits ~5e-2 from the golden; test_bf16_emulation measures
//    the same on the CPU rounding point by rounding point.
// A last case runs the official numerics (FP8 act quant, FP8/FP4 GEMMs) on both backends and
// compares them; and the official numerics with the bf16-rounded activations stored as bf16 (the
// CUDA backend's act_dtype, model/blocks.h rounded_dtype) against the same run with them in F32
// (CudaBackendOptions::bf16_activations off).
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/factory.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "tests/cuda/golden_util.h"

namespace v4rt::model {
namespace {

using golden_util::decode_err;
using golden_util::golden;
using golden_util::prefill_err;
using golden_util::run;
using kernels::cuda::ReferencePrecision;

bool gpu_present() { return kernels::cuda::device_count() > 0; }

const char* precision_name(ReferencePrecision p) {
  return p == ReferencePrecision::kF32 ? "f32" : p == ReferencePrecision::kBf16Split ? "bf16-split" : "bf16";
}

struct Loaded {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<Model> model;
};

Loaded load(const Checkpoint& ckpt, ReferencePrecision precision, const ModelOptions& options = {}) {
  kernels::cuda::CudaBackendOptions o;
  o.reference = precision;
  Loaded l;
  l.backend = kernels::cuda::make_cuda_backend(0, o);
  l.model = Model::load(ckpt, options, *l.backend);
  return l;
}

// One 520-token prefill with per-layer errors, chunks 301 + 219 then decode, chunks of 64 then
// decode; every logit error <= tol.
void check_precision(const Checkpoint& ckpt, ReferencePrecision precision, double tol) {
  Loaded l = load(ckpt, precision);
  Model& m = *l.model;
  const char* name = precision_name(precision);
  std::map<int, double> layers;
  m.set_layer_observer(golden_util::hidden_error_observer(*l.backend, m.config().hc_mult, m.config().hidden_size, &layers));
  const double e_one = prefill_err(run(m, 520, 520, {}));
  m.set_layer_observer(nullptr);
  std::printf("  [gpu-golden] %s: hidden after layer:", name);
  for (auto [layer, e] : layers) std::printf(" %d: %.2e", layer, e);
  std::printf("\n");
  EXPECT_EQ(layers.size(), size_t(m.config().num_hidden_layers));
  const int64_t vocab = m.config().vocab_size;
  const auto a = run(m, 544, 520, {301, 219});
  const auto b = run(m, 544, 520, {64});
  const double ep_a = prefill_err(a), ed_a = decode_err(a, vocab), ep_b = prefill_err(b), ed_b = decode_err(b, vocab);
  std::printf("  [gpu-golden] %s: one chunk prefill %.3e; chunks 301+219 prefill %.3e decode %.3e; chunks of 64 "
              "prefill %.3e decode %.3e (tol %.0e)\n",
              name, e_one, ep_a, ed_a, ep_b, ed_b, tol);
  EXPECT_LE(e_one, tol) << name;
  EXPECT_LE(ep_a, tol) << name;
  EXPECT_LE(ed_a, tol) << name;
  EXPECT_LE(ep_b, tol) << name;
  EXPECT_LE(ed_b, tol) << name;
}

class GpuGoldenTinyA : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (gpu_present()) ckpt_ = Checkpoint::open(golden_util::case_dir() + "/model").release();
  }
  static void TearDownTestSuite() { delete ckpt_; }
  void SetUp() override {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device on this machine";
    ASSERT_EQ(golden().ids.size(), 544u);
  }
  static Checkpoint* ckpt_;
};
Checkpoint* GpuGoldenTinyA::ckpt_ = nullptr;

TEST_F(GpuGoldenTinyA, Fp32PathWithin1e4) { check_precision(*ckpt_, ReferencePrecision::kF32, 1e-4); }

TEST_F(GpuGoldenTinyA, Bf16SplitPathWithin2e2) { check_precision(*ckpt_, ReferencePrecision::kBf16Split, 2e-2); }

// One bf16 rounding per GEMM input: printed, bounded against gross errors only (see the top).
TEST_F(GpuGoldenTinyA, PlainBf16PathCloseToGolden) {
  Loaded l = load(*ckpt_, ReferencePrecision::kBf16);
  const auto all = run(*l.model, 544, 520, {301, 219});
  const double ep = prefill_err(all), ed = decode_err(all, l.model->config().vocab_size);
  std::printf("  [gpu-golden] bf16 (plain): chunks 301+219 prefill %.3e decode %.3e\n", ep, ed);
  EXPECT_LT(ep, 0.15);
  EXPECT_LT(ed, 0.15);
}

// The official numerics (FP8 act quant before the FP8/FP4 GEMMs, bf16 rounding points) on the GPU
// against the same numerics on the CPU reference backend. Random weights make the FP8 simulation
// amplify single rounding flips (see the CPU golden test: ~20 % from the fp32 golden), so this
// bounds a gross error only; the figure is printed for the record.
TEST_F(GpuGoldenTinyA, OfficialNumericsAgainstCpu) {
  ModelOptions options;
  options.numerics = Numerics::kOfficial;
  Loaded g_loaded = load(*ckpt_, ReferencePrecision::kBf16Split, options);
  Model* gpu = g_loaded.model.get();
  auto cpu_backend = kernels::make_backend("cpu");
  auto cpu = Model::load(*ckpt_, options, *cpu_backend);
  const auto g = run(*gpu, 544, 520, {301, 219});
  const auto c = run(*cpu, 544, 520, {301, 219});
  const int64_t vocab = gpu->config().vocab_size;
  const double e_prefill = golden_util::rel_err(g.data(), c.data(), size_t(520 * vocab));
  const double e_decode = golden_util::rel_err(g.data() + 520 * vocab, c.data() + 520 * vocab, size_t(24 * vocab));
  std::printf("  [gpu-golden] official numerics, gpu vs cpu: prefill rel err %.3e, decode %.3e; gpu vs fp32 golden %.3e\n",
              e_prefill, e_decode, prefill_err(g));
  EXPECT_LT(e_prefill, 0.35);
  EXPECT_LT(e_decode, 0.35);
  EXPECT_LT(prefill_err(g), 0.5);
}

// The activations that every writer rounds to bf16 (queries, attention and wo_a outputs, the shared
// expert's gate, up and output, the indexer scores) hold the same values in bf16 storage as in F32,
// and every op computes them the same way (wo_a's GEMM writes bf16 in both: cuda_backend.cu,
// grouped_linear): the logits bit for bit.
TEST_F(GpuGoldenTinyA, OfficialBf16ActivationsEqualF32) {
  ModelOptions options;
  options.numerics = Numerics::kOfficial;
  Loaded bf16 = load(*ckpt_, ReferencePrecision::kBf16Split, options);
  ASSERT_EQ(bf16.backend->act_dtype(), DType::kBF16);
  kernels::cuda::CudaBackendOptions o;
  o.reference = ReferencePrecision::kBf16Split;
  o.bf16_activations = false;
  auto f32_backend = kernels::cuda::make_cuda_backend(0, o);
  ASSERT_EQ(f32_backend->act_dtype(), DType::kF32);
  auto f32 = Model::load(*ckpt_, options, *f32_backend);
  const auto a = run(*bf16.model, 544, 520, {301, 219});
  const auto b = run(*f32, 544, 520, {301, 219});
  ASSERT_EQ(a.size(), b.size());
  size_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  const int64_t vocab = f32->config().vocab_size;
  const double e_prefill = golden_util::rel_err(a.data(), b.data(), size_t(520 * vocab));
  const double e_decode = golden_util::rel_err(a.data() + 520 * vocab, b.data() + 520 * vocab, size_t(24 * vocab));
  std::printf("  [gpu-golden] official, bf16 against F32 activations: prefill rel err %.3e, decode %.3e; %zu of %zu "
              "logits equal\n",
              e_prefill, e_decode, same, a.size());
  EXPECT_EQ(same, a.size());
}

}  // namespace
}  // namespace v4rt::model
