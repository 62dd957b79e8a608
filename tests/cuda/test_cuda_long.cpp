// SPDX-License-Identifier: MIT
// Prompts past the CUDA grid limits: every op whose launch had the token count on gridDim.y (limit
// 65,535) runs on more rows than that and is compared with the CPU reference op: hc_pre / hc_head
// (the mix GEMV, once tokens on y: "hc mix_partial failed: invalid argument" at 65,536 tokens),
// indexer scores (query tokens on y) and the MoE gate scores (token tiles of 8 on y: over 524,280
// tokens). Sizes other than the row count are kept small so the CPU reference stays fast.
#include <cmath>

#include "tests/cuda/cuda_test_util.h"

namespace v4rt::kernels::cuda_test {
namespace {

const Tolerance kBf16Tol{1e-2, 1e-2, 1e-4};

TEST(CudaLongPrompt, HcPreAndHeadPast65535Tokens) {
  V4RT_REQUIRE_GPU();
  Rng rng(91);
  const int n = 65537, hc = 4, hidden = 128, nmix = (2 + hc) * hc;
  Dual x = make_dual({n, hc, hidden}, rng.normals(int64_t(n) * hc * hidden));
  DualWeight fn = upload_f32(rng.normals(int64_t(nmix) * hc * hidden, 0.02f, false), nmix, hc * hidden);
  DualWeight base = upload_f32(rng.normals(nmix, 0.5f, false), 1, nmix);
  DualWeight scale = upload_f32({0.7f, 1.3f, 0.9f}, 1, 3);
  Dual a = make_dual({n, hidden}, std::vector<float>(size_t(n) * hidden, 0.f));
  Dual post = make_dual({n, hc}, std::vector<float>(size_t(n) * hc, 0.f), DType::kF32);
  Dual comb = make_dual({n, hc, hc}, std::vector<float>(size_t(n) * hc * hc, 0.f), DType::kF32);
  HcPreParams p;
  p.x = x.cpu; p.fn = fn.cpu; p.base = base.cpu; p.scale = scale.cpu; p.a = a.cpu; p.post = post.cpu; p.comb = comb.cpu;
  cpu_backend().hc_pre(p);
  p.x = x.gpu; p.fn = fn.gpu; p.base = base.gpu; p.scale = scale.gpu; p.a = a.gpu; p.post = post.gpu; p.comb = comb.gpu;
  gpu_backend().hc_pre(p);
  EXPECT_TRUE(compare("hc_pre a n65537", a.gpu_values(), a.cpu_values(), kBf16Tol));
  EXPECT_TRUE(compare("hc_pre post n65537", post.gpu_values(), post.cpu_values(), {1e-4, 1e-5, 1e-8}));
  EXPECT_TRUE(compare("hc_pre comb n65537", comb.gpu_values(), comb.cpu_values(), {1e-3, 1e-4, 1e-7}));

  DualWeight hfn = upload_f32(rng.normals(int64_t(hc) * hc * hidden, 0.02f, false), hc, hc * hidden);
  DualWeight hbase = upload_f32(rng.normals(hc, 0.5f, false), 1, hc);
  DualWeight hscale = upload_f32({1.1f}, 1, 1);
  Dual y = make_dual({n, hidden}, std::vector<float>(size_t(n) * hidden, 0.f));
  HcHeadParams h;
  h.x = x.cpu; h.fn = hfn.cpu; h.base = hbase.cpu; h.scale = hscale.cpu; h.y = y.cpu;
  cpu_backend().hc_head(h);
  h.x = x.gpu; h.fn = hfn.gpu; h.base = hbase.gpu; h.scale = hscale.gpu; h.y = y.gpu;
  gpu_backend().hc_head(h);
  EXPECT_TRUE(compare("hc_head n65537", y.gpu_values(), y.cpu_values(), kBf16Tol));
}

TEST(CudaLongPrompt, IndexerScoresPast65535Queries) {
  V4RT_REQUIRE_GPU();
  Rng rng(92);
  // Query positions 70,000 .. 135,536: the last rows see all 40 keys, the first ones too (ratio 4).
  const int n = 65537, heads = 4, dim = 32, keys = 40;
  Dual q = make_dual({n, heads, dim}, rng.normals(int64_t(n) * heads * dim));
  Dual k = make_dual({keys, dim}, rng.normals(int64_t(keys) * dim));
  Dual w = make_dual({n, heads}, rng.normals(int64_t(n) * heads));
  Dual s = make_dual({n, keys}, std::vector<float>(size_t(n) * keys, 0.f), DType::kF32);
  IndexerScoresParams p;
  p.weight_scale = 0.25f;
  p.pos_begin = 70000;
  p.q = q.cpu; p.keys = k.cpu; p.w = w.cpu; p.scores = s.cpu;
  cpu_backend().indexer_scores(p);
  p.q = q.gpu; p.keys = k.gpu; p.w = w.gpu; p.scores = s.gpu;
  gpu_backend().indexer_scores(p);
  EXPECT_TRUE(compare("indexer n65537", s.gpu_values(), s.cpu_values(), {1e-4, 1e-4, 1e-8}));
}

TEST(CudaLongPrompt, MoeGatePast524280Tokens) {
  V4RT_REQUIRE_GPU();
  Rng rng(93);
  const int n = 65535 * 8 + 17, experts = 16, hidden = 128, topk = 2;
  // Values on a coarse grid: every product and partial sum is exact in fp32 in any order, so the
  // chosen experts must match exactly.
  auto coarse = [&](int64_t cnt) {
    std::vector<float> v(static_cast<size_t>(cnt));
    for (auto& x : v) x = float(rng.integer(-16, 16)) / 64.f;
    return v;
  };
  DualWeight gate = upload_f32(coarse(int64_t(experts) * hidden), experts, hidden, DType::kBF16);
  DualWeight bias = upload_f32(rng.normals(experts, 0.3f, false), 1, experts);
  Dual x = make_dual({n, hidden}, coarse(int64_t(n) * hidden));
  Dual idx = make_dual_i32({n, topk}, std::vector<int32_t>(size_t(n) * topk, -5));
  Dual wgt = make_dual({n, topk}, std::vector<float>(size_t(n) * topk, 0.f), DType::kF32);
  MoeGateParams p;
  p.topk = topk;
  p.route_scale = 1.5f;
  p.x = x.cpu; p.gate = gate.cpu; p.bias = bias.cpu; p.out_idx = idx.cpu; p.out_weight = wgt.cpu;
  cpu_backend().moe_gate(p);
  p.x = x.gpu; p.gate = gate.gpu; p.bias = bias.gpu; p.out_idx = idx.gpu; p.out_weight = wgt.gpu;
  gpu_backend().moe_gate(p);
  const auto gi = gpu_i32(idx), ci = cpu_i32(idx);
  int64_t mism = 0;
  for (size_t i = 0; i < gi.size(); ++i) mism += gi[i] != ci[i];
  EXPECT_EQ(mism, 0) << "moe_gate n" << n << " expert id mismatches";
  EXPECT_TRUE(compare("moe_gate weights n" + std::to_string(n), wgt.gpu_values(), wgt.cpu_values(), {1e-5, 1e-6, 1e-10}));
}

}  // namespace
}  // namespace v4rt::kernels::cuda_test
