// SPDX-License-Identifier: MIT
// What bf16 rounding costs on golden/tiny-a, measured on the CPU (no device needed): a Backend
// decorator over the fp32 CPU backend rounds the activations at the points where the CUDA
// backend's reference numerics round them (the input of every projection whose weight is stored
// as BF16/FP8, and the routed-expert pipeline x, gate/up, h, expert output), one point set at a
// time, and reports the prefill / decode logit errors against the fp32 golden, the per-layer
// residual errors and how many MoE routing choices differ from the fp32 run. "split" rounds to
// bf16 twice (x = hi + lo, both bf16: what a GEMM on [hi | lo] with bf16 tensor cores sees).
// The last test pins the numerics the CUDA backend uses to the target.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "tests/cuda/golden_util.h"

namespace v4rt::model {
namespace {

using golden_util::decode_err;
using golden_util::golden;
using golden_util::prefill_err;

enum class Round { kF32, kBf16, kSplit };

float apply(Round r, float v) {
  if (r == Round::kF32) return v;
  const float hi = round_bf16(v);
  return r == Round::kBf16 ? hi : hi + round_bf16(v - hi);
}

struct Points {
  const char* name = "";
  Round linear_x = Round::kF32;   // x of projections on BF16/FP8-stored weights
  Round expert_x = Round::kF32;   // routed-expert input rows
  Round expert_gu = Round::kF32;  // w1 / w3 outputs
  Round expert_h = Round::kF32;   // swiglu(g, u) * routing weight
  Round expert_y = Round::kF32;   // w2 output (summed in fp32)
};

class RoundingBackend final : public kernels::Backend {
 public:
  RoundingBackend(kernels::Backend& inner, Points pts) : in_(inner), pts_(pts) {}

  std::vector<std::vector<int32_t>> routes;  // moe_gate ids, one entry per call

  std::string name() const override { return "rounding(" + in_.name() + ")"; }
  Device device() const override { return in_.device(); }
  DType act_dtype() const override { return in_.act_dtype(); }
  bool supports(kernels::Op op) const override { return in_.supports(op); }
  kernels::WeightView upload_weight(const kernels::WeightSource& s) override {
    kernels::WeightView w = in_.upload_weight(s);
    if (s.dtype == DType::kBF16 || s.dtype == DType::kF8E4M3)
      bf16_stored_[static_cast<const char*>(w.data)] = size_t(w.rows * w.cols) * dtype_size(w.dtype);
    return w;
  }
  void copy_to_device(void* d, const void* s, size_t b) override { in_.copy_to_device(d, s, b); }
  void copy_to_host(void* d, const void* s, size_t b) override { in_.copy_to_host(d, s, b); }
  void copy_rows(const TensorView& d, const TensorView& s) override { in_.copy_rows(d, s); }
  void fill(const TensorView& d, float v) override { in_.fill(d, v); }
  void synchronize() override { in_.synchronize(); }
  void rms_norm(const kernels::RmsNormParams& p) override { in_.rms_norm(p); }
  void rope(const kernels::RopeParams& p) override { in_.rope(p); }
  void hc_pre(const kernels::HcPreParams& p) override { in_.hc_pre(p); }
  void hc_post(const kernels::HcPostParams& p) override { in_.hc_post(p); }
  void hc_head(const kernels::HcHeadParams& p) override { in_.hc_head(p); }
  void compressor_pool(const kernels::CompressorPoolParams& p) override { in_.compressor_pool(p); }
  void hadamard(const kernels::HadamardParams& p) override { in_.hadamard(p); }
  void indexer_scores(const kernels::IndexerScoresParams& p) override { in_.indexer_scores(p); }
  void topk(const kernels::TopkParams& p) override { in_.topk(p); }
  void sparse_attention(const kernels::SparseAttentionParams& p) override { in_.sparse_attention(p); }
  void swiglu(const kernels::SwigluParams& p) override { in_.swiglu(p); }
  void embedding(const kernels::EmbeddingParams& p) override { in_.embedding(p); }
  void add(const kernels::AddParams& p) override { in_.add(p); }
  void qdq(const kernels::QdqParams& p) override { in_.qdq(p); }

  void moe_gate(const kernels::MoeGateParams& p) override {
    in_.moe_gate(p);
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < p.out_idx.shape[0]; ++t)
      for (int k = 0; k < p.topk; ++k) ids.push_back(static_cast<const int32_t*>(p.out_idx.data)[t * p.out_idx.stride[0] + k]);
    routes.push_back(std::move(ids));
  }

  void linear(const kernels::LinearParams& p) override {
    if (!rounds(p.w)) return in_.linear(p);
    std::vector<float> tmp;
    kernels::LinearParams q = p;
    q.x = rounded(p.x, pts_.linear_x, &tmp);
    in_.linear(q);
  }
  void grouped_linear(const kernels::GroupedLinearParams& p) override {
    if (!rounds(p.w)) return in_.grouped_linear(p);
    std::vector<float> tmp;
    kernels::GroupedLinearParams q = p;
    q.x = rounded(p.x, pts_.linear_x, &tmp);
    in_.grouped_linear(q);
  }

  // The routed experts with the rounding points of the CUDA pipeline (weights are F32 on the CPU).
  void moe_experts(const kernels::MoeExpertsParams& p) override {
    const int64_t n = p.x.shape[0], topk = p.idx.shape[1], hidden = p.out.shape[1];
    std::vector<float> x(static_cast<size_t>(hidden)), g, h;
    for (int64_t t = 0; t < n; ++t) {
      const int32_t* idx = static_cast<const int32_t*>(p.idx.data) + t * p.idx.stride[0];
      const float* rw = static_cast<const float*>(p.weight.data) + t * p.weight.stride[0];
      const float* xr = static_cast<const float*>(p.x.data) + t * p.x.stride[0];
      float* out = static_cast<float*>(p.out.data) + t * p.out.stride[0];
      if (!p.accumulate) std::fill_n(out, hidden, 0.0f);  // the sum onto 0
      for (int64_t i = 0; i < hidden; ++i) x[size_t(i)] = apply(pts_.expert_x, xr[i]);
      std::vector<std::pair<int, int64_t>> order;
      for (int64_t k = 0; k < topk; ++k)
        if (idx[k] >= p.e_begin && idx[k] < p.e_end) order.push_back({idx[k], k});
      std::sort(order.begin(), order.end());
      for (auto [e, k] : order) {
        const float* w1 = static_cast<const float*>(p.w1[e].data);
        const float* w3 = static_cast<const float*>(p.w3[e].data);
        const float* w2 = static_cast<const float*>(p.w2[e].data);
        const int64_t inter = p.w1[e].rows;
        h.assign(size_t(inter), 0.f);
        for (int64_t i = 0; i < inter; ++i) {
          float a = 0, b = 0;
          for (int64_t j = 0; j < hidden; ++j) {
            a += w1[i * hidden + j] * x[size_t(j)];
            b += w3[i * hidden + j] * x[size_t(j)];
          }
          a = apply(pts_.expert_gu, a);
          b = apply(pts_.expert_gu, b);
          const float lim = p.swiglu_limit, ga = std::min(a, lim);
          h[size_t(i)] = apply(pts_.expert_h, ga / (1.0f + std::exp(-ga)) * std::clamp(b, -lim, lim) * rw[k]);
        }
        for (int64_t d = 0; d < hidden; ++d) {
          float v = 0;
          for (int64_t i = 0; i < inter; ++i) v += w2[d * inter + i] * h[size_t(i)];
          out[d] += apply(pts_.expert_y, v);
        }
      }
    }
  }

 private:
  bool rounds(const kernels::WeightView& w) const {
    if (pts_.linear_x == Round::kF32) return false;
    auto it = bf16_stored_.upper_bound(static_cast<const char*>(w.data));
    if (it == bf16_stored_.begin()) return false;
    --it;
    return static_cast<const char*>(w.data) < it->first + it->second;
  }
  // A contiguous rounded copy of an F32 view (rows may be strided).
  static TensorView rounded(const TensorView& x, Round r, std::vector<float>* tmp) {
    const int64_t rows = x.shape[0];
    int64_t width = 1;
    for (int d = 1; d < x.ndim; ++d) width *= x.shape[d];
    tmp->resize(size_t(rows * width));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < width; ++j)
        (*tmp)[size_t(i * width + j)] = apply(r, static_cast<const float*>(x.data)[i * x.stride[0] + j]);
    TensorView v = x;
    v.data = tmp->data();
    v.stride[x.ndim - 1] = 1;
    for (int d = x.ndim - 2; d >= 0; --d) v.stride[d] = v.stride[d + 1] * x.shape[d + 1];
    return v;
  }

  kernels::Backend& in_;
  Points pts_;
  std::map<const char*, size_t> bf16_stored_;
};

struct Result {
  double prefill = 0, decode = 0;
  std::map<int, double> layers;
  int64_t route_diffs = 0, route_total = 0;
};

class Bf16Emulation : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ckpt_ = Checkpoint::open(golden_util::case_dir() + "/model").release(); }
  static void TearDownTestSuite() { delete ckpt_; }

  // One-chunk prefill (per-layer errors, routes), then chunks 301 + 219 and 24 decode steps.
  static Result measure(const Points& pts) {
    auto cpu = kernels::make_cpu_backend();
    RoundingBackend be(*cpu, pts);
    auto m = Model::load(*ckpt_, ModelOptions{}, be);
    Result r;
    m->set_layer_observer(golden_util::hidden_error_observer(be, m->config().hc_mult, m->config().hidden_size, &r.layers));
    golden_util::run(*m, 520, 520, {});
    m->set_layer_observer(nullptr);
    const auto routes = be.routes;
    const auto all = golden_util::run(*m, 544, 520, {301, 219});
    r.prefill = prefill_err(all);
    r.decode = decode_err(all, m->config().vocab_size);
    static std::vector<std::vector<int32_t>> fp32_routes;
    if (pts.linear_x == Round::kF32 && pts.expert_x == Round::kF32 && pts.expert_gu == Round::kF32 &&
        pts.expert_h == Round::kF32 && pts.expert_y == Round::kF32)
      fp32_routes = routes;
    for (size_t c = 0; c < std::min(routes.size(), fp32_routes.size()); ++c)
      for (size_t i = 0; i < std::min(routes[c].size(), fp32_routes[c].size()); ++i) {
        r.route_diffs += routes[c][i] != fp32_routes[c][i];
        ++r.route_total;
      }
    std::printf("  [bf16-emulation] %-40s prefill %.3e decode %.3e routes differing %lld/%lld; layers:", pts.name,
                r.prefill, r.decode, static_cast<long long>(r.route_diffs), static_cast<long long>(r.route_total));
    for (auto [l, e] : r.layers) std::printf(" %.1e", e);
    std::printf("\n");
    return r;
  }

  static Checkpoint* ckpt_;
};
Checkpoint* Bf16Emulation::ckpt_ = nullptr;

constexpr Round F = Round::kF32, B = Round::kBf16, S = Round::kSplit;

TEST_F(Bf16Emulation, RoundingPoints) {
  const Result fp32 = measure({"fp32 (no rounding)", F, F, F, F, F});
  EXPECT_LE(fp32.prefill, 1e-5);
  EXPECT_EQ(fp32.route_diffs, 0);
  const Points cases[] = {
      {"all bf16 (linear x, experts x/gu/h/y)", B, B, B, B, B},
      {"experts bf16 only", F, B, B, B, B},
      {"linear x bf16 only", B, F, F, F, F},
      {"expert x bf16 only", F, B, F, F, F},
      {"expert gu bf16 only", F, F, B, F, F},
      {"expert h bf16 only", F, F, F, B, F},
      {"expert y bf16 only", F, F, F, F, B},
      {"linear x split, experts bf16", S, B, B, B, B},
      {"linear x split, expert x split, rest bf16", S, S, B, B, B},
      {"all split", S, S, S, S, S},
  };
  for (const Points& p : cases) measure(p);
}

// The CUDA backend's reference numerics (CudaBackendOptions::reference): kBf16Split, the default
// (bf16 weights, projection inputs as hi + lo bf16 terms, routed experts in fp32), must meet the
// 2e-2 target; kBf16 (one bf16 rounding per GEMM input and expert intermediate) cannot on this
// model: routing flips at the score-routed layers (printed above) put it at ~5e-2.
TEST_F(Bf16Emulation, CudaReferenceNumerics) {
  measure({"fp32 (no rounding)", F, F, F, F, F});
  const Result split = measure({"cuda kBf16Split: linear x split, experts fp32", S, F, F, F, F});
  EXPECT_LE(split.prefill, 2e-2);
  EXPECT_LE(split.decode, 2e-2);
  const Result plain = measure({"cuda kBf16: all bf16", B, B, B, B, B});
  EXPECT_GT(plain.prefill, split.prefill);
}

}  // namespace
}  // namespace v4rt::model
