// SPDX-License-Identifier: MIT
// Manifold-constrained hyper-connections around each sublayer (spec §4), over backend ops.
#include "kernels/backend.h"
#include "model/blocks.h"

namespace v4rt::model {

Scratch make_scratch(kernels::Backend& backend, std::initializer_list<int64_t> dims, DType dtype) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  Scratch s;
  s.buffer = backend.alloc(size_t(std::max<int64_t>(n, 1)) * dtype_size(dtype));
  s.view = TensorView(s.buffer.data(), dtype, dims, backend.device());
  return s;
}

DType rounded_dtype(const BlockContext& ctx) {
  return ctx.official && ctx.backend.act_dtype() == DType::kBF16 ? DType::kBF16 : DType::kF32;
}

HcMix hc_pre(const BlockContext& ctx, const HcWeights& w, const TensorView& x, const TensorView& a) {
  const int64_t n = x.shape[0];
  const int64_t hc = ctx.config.hc_mult;
  HcMix mix;
  mix.post = make_scratch(ctx.backend, {n, hc});
  mix.comb = make_scratch(ctx.backend, {n, hc, hc});
  kernels::HcPreParams p;
  p.x = x;
  p.fn = w.fn;
  p.base = w.base;
  p.scale = w.scale;
  p.a = a;
  p.post = mix.post.view;
  p.comb = mix.comb.view;
  p.sinkhorn_iters = ctx.config.hc_sinkhorn_iters;
  p.hc_eps = float(ctx.config.hc_eps);
  p.norm_eps = float(ctx.config.rms_norm_eps);
  p.out_bf16 = ctx.official;
  ctx.backend.hc_pre(p);
  return mix;
}

void hc_post(const BlockContext& ctx, const HcMix& mix, const TensorView& o, const TensorView& x_old,
             const TensorView& x_new) {
  kernels::HcPostParams p;
  p.o = o;
  p.x_old = x_old;
  p.post = mix.post.view;
  p.comb = mix.comb.view;
  p.x_new = x_new;
  p.out_bf16 = ctx.official;
  ctx.backend.hc_post(p);
}

Scratch lm_head(const BlockContext& ctx, const HcWeights& hc_head, const WeightView& norm, const WeightView& head,
                const TensorView& x) {
  const int64_t rows = x.shape[0];
  Scratch y = make_scratch(ctx.backend, {rows, ctx.config.hidden_size});
  kernels::HcHeadParams hp;
  hp.x = x;
  hp.fn = hc_head.fn;
  hp.base = hc_head.base;
  hp.scale = hc_head.scale;
  hp.y = y.view;
  hp.hc_eps = float(ctx.config.hc_eps);
  hp.norm_eps = float(ctx.config.rms_norm_eps);
  hp.out_bf16 = ctx.official;
  ctx.backend.hc_head(hp);
  kernels::RmsNormParams np;
  np.x = np.y = y.view;
  np.weight = norm;
  np.eps = float(ctx.config.rms_norm_eps);
  np.out_bf16 = ctx.official;
  ctx.backend.rms_norm(np);
  Scratch lg = make_scratch(ctx.backend, {rows, ctx.config.vocab_size});
  kernels::LinearParams lp;  // fp32 GEMM on the bf16 weight in every mode
  lp.x = y.view;
  lp.w = head;
  lp.y = lg.view;
  lp.x_bf16_exact = ctx.official;  // rounded to bf16 by the norm above
  ctx.backend.linear(lp);
  return lg;
}

}  // namespace v4rt::model
