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

}  // namespace v4rt::model
