// SPDX-License-Identifier: MIT
// The full model on the CUDA backend against golden/tiny-a (logits of an independent fp32
// implementation), reference numerics: one 520-token prefill (with the residual streams after
// every layer), the golden's cached run (chunks 301 + 219, then 24 decode steps) and chunks of 64
// then decode, with tolerance 2e-2 relative Frobenius error. These run with fp32 dense GEMMs
// (CudaBackendOptions::fp32_dense); the routed experts still take bf16 activations. On an H200
// (2026-11-29) they measured 5.8e-2 (prefill) / 5.1e-2 (decode): the 2e-2 target is not met yet;
// the error is 2-3e-3 after layers 0-1 (hash-routed) and jumps at layer 2, the first score-routed
// MoE layer, which points at routing flips (MoE gate or the bf16 expert path).
// The default bf16 path (activations rounded to bf16 at every GEMM) is checked separately with a
// gross-error bound only: bf16-level noise flips discrete choices (indexer top-16 of ~130 entries,
// MoE top-4 of 16 experts), each flip moving a token's output by O(1/k), so its logits differ from
// the fp32 golden by several percent. A last case runs the official numerics (FP8 act quant,
// FP8/FP4 GEMMs) on both backends and compares them. The golden folder is $V4RT_GOLDEN_DIR at run
// time (the device machine gets a copy inside the tree), else the compile-time V4RT_GOLDEN_DIR.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/factory.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/safetensors.h"

namespace v4rt::model {
namespace {

constexpr double kTol = 2e-2;

std::string case_dir() {
  const char* env = std::getenv("V4RT_GOLDEN_DIR");
  return std::string(env && *env ? env : V4RT_GOLDEN_DIR) + "/tiny-a";
}

bool gpu_present() { return kernels::cuda::device_count() > 0; }

struct Golden {
  std::map<std::string, std::vector<float>> f32;
  std::vector<int32_t> ids;
};

const Golden& golden() {
  static Golden g = [] {
    Golden out;
    const std::string path = case_dir() + "/reference.safetensors";
    safetensors::MappedFile file(path);
    const safetensors::Header h = safetensors::parse_header(file.data(), file.size(), file.size(), path);
    for (const safetensors::Entry& e : h.entries) {
      const uint8_t* p = file.data() + h.data_offset + e.begin;
      const uint64_t n = safetensors::shape_numel(e.shape);
      if (e.dtype == DType::kI64) {
        for (uint64_t i = 0; i < n; ++i) {
          int64_t v;
          std::memcpy(&v, p + 8 * i, 8);
          out.ids.push_back(int32_t(v));
        }
      } else {
        std::vector<float> v(n);
        std::memcpy(v.data(), p, n * 4);
        out.f32[e.name] = std::move(v);
      }
    }
    return out;
  }();
  return g;
}

double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Feeds ids [0, len): the prompt [0, prompt) in chunks (`chunks`, or one chunk), then one token at a
// time. Returns the logits after every token, [len, vocab].
std::vector<float> run(Model& m, int64_t len, int64_t prompt, std::vector<int64_t> chunks) {
  const auto& ids = golden().ids;
  const int64_t vocab = m.config().vocab_size;
  if (chunks.empty()) chunks = {prompt};
  auto seq = m.new_sequence();
  std::vector<float> all(size_t(len * vocab));
  const auto t0 = std::chrono::steady_clock::now();
  int64_t pos = 0;
  size_t ci = 0;
  while (pos < len) {
    int64_t n = 1;
    if (pos < prompt) n = std::min(chunks[std::min(ci++, chunks.size() - 1)], prompt - pos);
    StepChunk c{seq.get(), std::span<const int32_t>(ids.data() + pos, size_t(n)), true};
    std::vector<std::vector<float>> logits;
    m.step(std::span<const StepChunk>(&c, 1), &logits);
    EXPECT_EQ(logits[0].size(), size_t(n * vocab));
    std::memcpy(all.data() + pos * vocab, logits[0].data(), logits[0].size() * 4);
    pos += n;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  [run len=%lld prompt=%lld: %.3f s]\n", static_cast<long long>(len), static_cast<long long>(prompt),
              secs);
  return all;
}

double prefill_err(const std::vector<float>& all) {
  const auto& ref = golden().f32.at("prefill_logits");
  return rel_err(all.data(), ref.data(), ref.size());
}

double decode_err(const std::vector<float>& all, int64_t vocab) {
  const auto& ref = golden().f32.at("decode_logits");
  return rel_err(all.data() + 520 * vocab, ref.data(), ref.size());
}

class GpuGoldenTinyA : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!gpu_present()) return;
    ckpt_ = Checkpoint::open(case_dir() + "/model").release();
    kernels::cuda::CudaBackendOptions o;
    o.fp32_dense = true;
    backend_ = kernels::cuda::make_cuda_backend(0, o).release();
    model_ = Model::load(*ckpt_, ModelOptions{}, *backend_).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    delete ckpt_;
  }
  void SetUp() override {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device on this machine";
    ASSERT_EQ(golden().ids.size(), 544u);
  }

  static Checkpoint* ckpt_;
  static kernels::Backend* backend_;
  static Model* model_;
};
Checkpoint* GpuGoldenTinyA::ckpt_ = nullptr;
kernels::Backend* GpuGoldenTinyA::backend_ = nullptr;
Model* GpuGoldenTinyA::model_ = nullptr;

TEST_F(GpuGoldenTinyA, PrefillLogitsAndLayerHidden) {
  const int64_t hidden = model_->config().hidden_size;
  const int64_t hc = model_->config().hc_mult;
  std::map<int, double> errs;
  model_->set_layer_observer([&](int layer, int64_t pos_begin, const TensorView& x) {
    ASSERT_EQ(pos_begin, 0);
    const int64_t n = x.shape[0];
    ASSERT_EQ(n, 520);
    const size_t count = size_t(32 * hc * hidden);
    std::vector<float> host(count);
    const size_t es = dtype_size(x.dtype);
    std::vector<uint8_t> raw(count * es);
    backend_->copy_to_host(raw.data(), static_cast<const uint8_t*>(x.data) + size_t((n - 32) * hc * hidden) * es,
                           raw.size());
    for (size_t i = 0; i < count; ++i) {
      if (x.dtype == DType::kF32) {
        std::memcpy(&host[i], raw.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        host[i] = bf16_to_f32(h);
      }
    }
    const auto& ref = golden().f32.at("prefill_hidden_after_layer_" + std::to_string(layer));
    errs[layer] = rel_err(host.data(), ref.data(), ref.size());
  });
  const std::vector<float> all = run(*model_, 520, 520, {});
  model_->set_layer_observer(nullptr);
  for (auto [layer, e] : errs) std::printf("  hidden after layer %d: rel err %.3e\n", layer, e);
  EXPECT_EQ(errs.size(), size_t(model_->config().num_hidden_layers));
  const double e = prefill_err(all);
  std::printf("  [gpu-golden] one chunk of 520: prefill logits rel err %.3e (tol %.0e)\n", e, kTol);
  EXPECT_LE(e, kTol);
}

TEST_F(GpuGoldenTinyA, Chunks301And219ThenDecode) {
  const auto all = run(*model_, 544, 520, {301, 219});
  const double ep = prefill_err(all), ed = decode_err(all, model_->config().vocab_size);
  std::printf("  [gpu-golden] chunks 301+219: prefill rel err %.3e; 24 decode steps rel err %.3e (tol %.0e)\n", ep,
              ed, kTol);
  EXPECT_LE(ep, kTol);
  EXPECT_LE(ed, kTol);
}

TEST_F(GpuGoldenTinyA, Chunks64ThenDecode) {
  const auto all = run(*model_, 544, 520, {64});
  const double ep = prefill_err(all), ed = decode_err(all, model_->config().vocab_size);
  std::printf("  [gpu-golden] chunks of 64: prefill rel err %.3e; decode rel err %.3e (tol %.0e)\n", ep, ed, kTol);
  EXPECT_LE(ep, kTol);
  EXPECT_LE(ed, kTol);
}

// The default bf16 path (what production runs with reference numerics): printed, and bounded
// against gross errors only (see the file comment).
TEST_F(GpuGoldenTinyA, Bf16PathCloseToGolden) {
  auto bf16_backend = kernels::make_backend("cuda", 0);
  auto m = Model::load(*ckpt_, ModelOptions{}, *bf16_backend);
  const auto all = run(*m, 544, 520, {301, 219});
  const double ep = prefill_err(all), ed = decode_err(all, m->config().vocab_size);
  std::printf("  [gpu-golden] bf16 path, chunks 301+219: prefill rel err %.3e; decode rel err %.3e\n", ep, ed);
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
  auto gpu_backend = kernels::make_backend("cuda", 0);
  auto gpu = Model::load(*ckpt_, options, *gpu_backend);
  auto cpu_backend = kernels::make_backend("cpu");
  auto cpu = Model::load(*ckpt_, options, *cpu_backend);
  const auto g = run(*gpu, 544, 520, {301, 219});
  const auto c = run(*cpu, 544, 520, {301, 219});
  const int64_t vocab = gpu->config().vocab_size;
  const double e_prefill = rel_err(g.data(), c.data(), size_t(520 * vocab));
  const double e_decode = rel_err(g.data() + 520 * vocab, c.data() + 520 * vocab, size_t(24 * vocab));
  std::printf("  [gpu-golden] official numerics, gpu vs cpu: prefill rel err %.3e, decode %.3e; gpu vs fp32 golden %.3e\n",
              e_prefill, e_decode, prefill_err(g));
  EXPECT_LT(e_prefill, 0.35);
  EXPECT_LT(e_decode, 0.35);
  EXPECT_LT(prefill_err(g), 0.5);
}

}  // namespace
}  // namespace v4rt::model
