// SPDX-License-Identifier: MIT
// The V4 MoE sublayer (spec §6): router (hash or biased score top-k), the routed experts this rank
// holds, and the shared expert. Every numeric step is a backend op.
#include "common/check.h"
#include "model/blocks.h"

namespace v4rt::model {

void moe_forward(const BlockContext& ctx, const LayerWeights& w, int layer, const TensorView& b,
                 const TensorView& token_ids, const TensorView& out) {
  const ModelConfig& cfg = ctx.config;
  kernels::Backend& be = ctx.backend;
  const MoeWeights& mw = w.moe;
  const int64_t n = b.shape[0];
  const int64_t hidden = cfg.hidden_size;
  const int k = cfg.num_experts_per_tok;

  Scratch idx = make_scratch(be, {n, k}, DType::kI32);
  Scratch weight = make_scratch(be, {n, k});
  kernels::MoeGateParams gp;
  gp.x = b;
  gp.gate = mw.gate;
  gp.bias = mw.bias;
  if (cfg.is_hash_layer(layer)) {
    gp.tid2eid = mw.tid2eid;
    gp.token_ids = token_ids;
  }
  gp.out_idx = idx.view;
  gp.out_weight = weight.view;
  gp.topk = k;
  gp.route_scale = float(cfg.routed_scaling_factor);
  be.moe_gate(gp);

  Scratch acc = make_scratch(be, {n, hidden});
  be.fill(acc.view, 0.0f);
  kernels::MoeExpertsParams ep;
  ep.x = b;
  ep.idx = idx.view;
  ep.weight = weight.view;
  ep.w1 = mw.w1.data();
  ep.w2 = mw.w2.data();
  ep.w3 = mw.w3.data();
  ep.out = acc.view;
  ep.e_begin = mw.expert_begin;
  ep.e_end = mw.expert_end;
  ep.swiglu_limit = float(cfg.swiglu_limit);
  ep.official = ctx.official;
  // PARALLEL: dispatch — under EP the tokens routed to experts outside [expert_begin, expert_end)
  // go to their owners (all-to-all) and come back weighted.
  be.moe_experts(ep);
  // PARALLEL: combine — the routed partial sums of all EP ranks are added here.

  const int64_t inter = mw.shared_w1.rows;
  Scratch g = make_scratch(be, {n, inter});
  Scratch u = make_scratch(be, {n, inter});
  for (auto [wv, dst] : {std::pair{&mw.shared_w1, &g}, std::pair{&mw.shared_w3, &u}}) {
    kernels::LinearParams p;
    p.x = b;
    p.w = *wv;
    p.y = dst->view;
    p.act_quant_fp8 = p.out_bf16 = ctx.official;
    be.linear(p);
  }
  kernels::SwigluParams sp;
  sp.gate = g.view;
  sp.up = u.view;
  sp.h = g.view;
  sp.limit = float(cfg.swiglu_limit);
  sp.out_bf16 = ctx.official;
  be.swiglu(sp);
  Scratch y = make_scratch(be, {n, hidden});
  kernels::LinearParams p;
  p.x = g.view;
  p.w = mw.shared_w2;
  p.y = y.view;
  p.act_quant_fp8 = p.out_bf16 = ctx.official;
  be.linear(p);
  kernels::AddParams ap;
  ap.a = acc.view;
  ap.b = y.view;
  ap.out = out;
  ap.out_bf16 = ctx.official;
  be.add(ap);
}

}  // namespace v4rt::model
