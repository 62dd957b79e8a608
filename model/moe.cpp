// SPDX-License-Identifier: MIT
// The V4 MoE sublayer (spec §6): router (hash or biased score top-k), the routed experts this rank
// holds, and the shared expert. Every numeric step is a backend op.
#include <glog/logging.h>

#include <algorithm>
#include <functional>

#include "common/check.h"
#include "model/blocks.h"

namespace v4rt::model {

namespace {

// PARALLEL: dispatch — the (token, expert) pairs go to the EP ranks holding the experts (counts,
// then payload, all-to-all) on the EP Comm's memory: the backend's buffers, no host copy of the
// activations. Only the routing (ids and weights, k per token) comes to the host: it sizes the
// exchange. `overlap` (the shared expert) is enqueued on the compute stream while the payload
// moves. Each rank runs its experts on what it received, one expert per row with the routing
// weight applied as the single-rank loop does; combine returns the weighted rows and sums them per
// token in ascending expert id, in fp32 — the single-rank accumulation order.
void routed_expert_parallel(const BlockContext& ctx, const MoeWeights& mw, const TensorView& b, const TensorView& idx,
                            const TensorView& weight, const TensorView& acc, const std::function<void()>& overlap) {
  kernels::Backend& be = ctx.backend;
  parallel::ExpertParallel& ep = *ctx.experts;
  const int64_t n = b.shape[0];
  const int64_t hidden = ctx.config.hidden_size;
  const int k = ctx.config.num_experts_per_tok;
  CHECK(b.contiguous() && acc.contiguous()) << "MoE activations must be contiguous";
  CHECK(ep.device() == be.device()) << "EP Comm and backend on different memory";
  CHECK(b.dtype == ep.config().dtype) << "MoE input is " << dtype_name(b.dtype) << ", EP dispatch sends "
                                      << dtype_name(ep.config().dtype);
  std::vector<int32_t> ids(size_t(n * k));
  std::vector<float> w(size_t(n * k));
  be.copy_to_host(ids.data(), idx.data, ids.size() * sizeof(int32_t));
  be.copy_to_host(w.data(), weight.data, w.size() * sizeof(float));
  parallel::DispatchLayout layout;
  parallel::DispatchedBuffers rows = ep.dispatch_buffers(b.data, ids.data(), w.data(), n, &layout);
  overlap();
  ep.wait_dispatch();
  const int64_t num_rows = rows.num_rows;
  Scratch yr = make_scratch(be, {std::max<int64_t>(num_rows, 1), hidden});
  if (num_rows > 0) {
    kernels::MoeExpertsParams ep_params;
    ep_params.accumulate = false;  // yr = the local experts' sum
    ep_params.x = rows.rows.view(b.dtype, {num_rows, hidden});
    ep_params.idx = rows.experts.view(DType::kI32, {num_rows, 1});
    ep_params.weight = rows.weights.view(DType::kF32, {num_rows, 1});
    ep_params.w1 = mw.w1.data();
    ep_params.w2 = mw.w2.data();
    ep_params.w3 = mw.w3.data();
    ep_params.out = yr.view;
    ep_params.e_begin = mw.expert_begin;
    ep_params.e_end = mw.expert_end;
    ep_params.swiglu_limit = float(ctx.config.swiglu_limit);
    ep_params.official = ctx.official;
    be.moe_experts(ep_params);
  }
  ep.combine_buffers(yr.view.data, DType::kF32, layout, ids.data(), w.data(), /*apply_weights=*/false,
                     static_cast<float*>(acc.data));
}

}  // namespace

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

  // The shared expert (§6): y = w2(swiglu(w1 b, w3 b)), on every rank.
  const int64_t inter = mw.shared_w1.rows;
  // The shared expert's gate, up, h and output: each rounded to bf16 by its writer (official).
  Scratch y = make_scratch(be, {n, hidden}, rounded_dtype(ctx));
  auto shared_expert = [&] {
    Scratch g = make_scratch(be, {n, inter}, rounded_dtype(ctx));
    Scratch u = make_scratch(be, {n, inter}, rounded_dtype(ctx));
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
    kernels::LinearParams p;
    p.x = g.view;
    p.w = mw.shared_w2;
    p.y = y.view;
    p.act_quant_fp8 = p.out_bf16 = ctx.official;
    be.linear(p);
  };

  Scratch acc = make_scratch(be, {n, hidden});
  if (ctx.experts) {
    // PARALLEL: the shared expert runs while the dispatch payload is on the wire.
    routed_expert_parallel(ctx, mw, b, idx.view, weight.view, acc.view, shared_expert);
  } else {
    kernels::MoeExpertsParams ep;
    ep.accumulate = false;  // acc = the routed experts' sum
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
    be.moe_experts(ep);
    shared_expert();
  }

  kernels::AddParams ap;
  ap.a = acc.view;
  ap.b = y.view;
  ap.out = out;
  ap.out_bf16 = ctx.official;
  be.add(ap);
}

}  // namespace v4rt::model
