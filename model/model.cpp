// SPDX-License-Identifier: MIT
// Model: loads the weights and runs the forward pass (spec §3) chunk by chunk: embedding into the
// hyper-connection streams, the blocks (mHC around attention and MoE), hc_head, final norm, head.
#include "model/model.h"

#include <glog/logging.h>

#include "common/check.h"
#include "model/blocks.h"

namespace v4rt::model {

Numerics parse_numerics(const std::string& text) {
  if (text == "reference") return Numerics::kReference;
  if (text == "official") return Numerics::kOfficial;
  V4RT_FAIL("numerics '" << text << "' is not one of: reference, official");
}

std::unique_ptr<Model> Model::load(const Checkpoint& ckpt, const ModelOptions& options, kernels::Backend& backend) {
  std::unique_ptr<Model> m(new Model(ckpt.config(), options, backend));
  const ParallelContext& par = options.parallel;
  m->weights_ = load_weights(ckpt, backend, par.sharded() ? shard_of(par.plan) : options.shard);
  if (par.layout.tp > 1) CHECK(par.tp && par.tp->size() == par.layout.tp) << "TP layout without its communicator";
  if (par.layout.sp > 1) CHECK(par.sp && par.sp->size() == par.layout.sp) << "SP layout without its communicator";
  if (par.layout.ep > 1) {
    CHECK(par.ep && par.ep->size() == par.layout.ep) << "EP layout without its communicator";
    parallel::EpConfig ec;
    ec.num_experts = m->config_.n_routed_experts;
    ec.hidden = m->config_.hidden_size;
    ec.topk = m->config_.num_experts_per_tok;
    ec.dtype = backend.act_dtype();
    m->expert_parallel_ = std::make_unique<parallel::ExpertParallel>(*par.ep, ec);
  }
  if (par.sharded()) {
    LOG(INFO) << "rank " << par.plan.world_rank << ": tp " << par.plan.coords.tp_idx << "/" << par.layout.tp << " sp "
              << par.plan.sp_idx << "/" << par.layout.sp << " ep " << par.plan.coords.ep_idx << "/" << par.layout.ep
              << " dp " << par.plan.coords.dp_idx << "/" << par.layout.dp << "; heads [" << par.plan.heads.begin << ", "
              << par.plan.heads.end << "), experts [" << par.plan.experts.begin << ", " << par.plan.experts.end
              << "); weights loaded " << m->weights_.bytes_loaded << " bytes";
  }
  return m;
}

Shard Model::shard() const {
  return options_.parallel.sharded() ? shard_of(options_.parallel.plan) : options_.shard;
}

std::unique_ptr<SequenceState> Model::new_sequence() {
  auto seq = std::make_unique<SequenceState>(config_, backend_);
  if (options_.parallel.layout.sp > 1) seq->set_ownership(ownership_of(options_.parallel));
  return seq;
}

void Model::step(std::span<const StepChunk> chunks, std::vector<std::vector<float>>* logits) {
  if (logits) logits->assign(chunks.size(), {});
  // NOTE: chunks run one after another; batching the projections of several sequences into one
  // GEMM is a later optimisation that does not change this interface.
  for (size_t i = 0; i < chunks.size(); ++i) forward_chunk(chunks[i], logits ? &(*logits)[i] : nullptr);
}

void Model::forward_chunk(const StepChunk& chunk, std::vector<float>* logits) {
  CHECK(chunk.sequence != nullptr);
  const int64_t n = int64_t(chunk.tokens.size());
  if (n == 0) return;
  for (int32_t id : chunk.tokens)
    V4RT_REQUIRE(id >= 0 && id < config_.vocab_size, "token id " << id << " outside the vocabulary of " << config_.vocab_size);
  SequenceState& seq = *chunk.sequence;
  const int64_t pos = seq.position();
  const int64_t hc = config_.hc_mult;
  const int64_t hidden = config_.hidden_size;
  const BlockContext ctx{config_, backend_, options_.numerics == Numerics::kOfficial,
                         options_.parallel.sharded() ? &options_.parallel : nullptr, expert_parallel_.get()};

  Scratch ids = make_scratch(backend_, {n}, DType::kI32);
  backend_.copy_to_device(ids.buffer.data(), chunk.tokens.data(), size_t(n) * sizeof(int32_t));
  Scratch x = make_scratch(backend_, {n, hc, hidden});
  Scratch x2 = make_scratch(backend_, {n, hc, hidden});
  Scratch a = make_scratch(backend_, {n, hidden});
  Scratch o = make_scratch(backend_, {n, hidden});
  kernels::EmbeddingParams ep;
  ep.table = weights_.embed;
  ep.ids = ids.view;
  ep.out = x.view;
  backend_.embedding(ep);

  auto sublayer_norm = [&](const WeightView& w) {
    kernels::RmsNormParams p;
    p.x = p.y = a.view;
    p.weight = w;
    p.eps = float(config_.rms_norm_eps);
    p.out_bf16 = ctx.official;
    backend_.rms_norm(p);
  };
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[size_t(l)];
    HcMix mix = hc_pre(ctx, lw.hc_attn, x.view, a.view);
    sublayer_norm(lw.attn_norm);
    attention_forward(ctx, lw, seq.layer(l), seq.ownership(), pos, a.view, o.view);
    hc_post(ctx, mix, o.view, x.view, x2.view);
    mix = hc_pre(ctx, lw.hc_ffn, x2.view, a.view);
    sublayer_norm(lw.ffn_norm);
    moe_forward(ctx, lw, l, a.view, ids.view, o.view);
    hc_post(ctx, mix, o.view, x2.view, x.view);
    if (observer_) observer_(l, pos, x.view);
  }
  seq.advance(n);
  if (chunk.hidden.data) {
    const int64_t rows = chunk.hidden.shape[0];
    CHECK(rows >= 1 && rows <= n && chunk.hidden.numel() == rows * hc * hidden) << "hidden output " << chunk.hidden.shape_str();
    backend_.copy_rows(kernels::view_reshape(chunk.hidden, {rows, hc * hidden}),
                       kernels::view_reshape(kernels::view_rows(x.view, n - rows, n), {rows, hc * hidden}));
  }
  if (!logits) return;

  const int64_t rows = chunk.all_logits ? n : 1;
  Scratch y = make_scratch(backend_, {rows, hidden});
  kernels::HcHeadParams hp;
  hp.x = kernels::view_rows(x.view, n - rows, n);
  hp.fn = weights_.hc_head.fn;
  hp.base = weights_.hc_head.base;
  hp.scale = weights_.hc_head.scale;
  hp.y = y.view;
  hp.hc_eps = float(config_.hc_eps);
  hp.norm_eps = float(config_.rms_norm_eps);
  hp.out_bf16 = ctx.official;
  backend_.hc_head(hp);
  kernels::RmsNormParams np;
  np.x = np.y = y.view;
  np.weight = weights_.norm;
  np.eps = float(config_.rms_norm_eps);
  np.out_bf16 = ctx.official;
  backend_.rms_norm(np);
  Scratch lg = make_scratch(backend_, {rows, config_.vocab_size});
  kernels::LinearParams lp;  // fp32 GEMM on the bf16 weight in every mode
  lp.x = y.view;
  lp.w = weights_.head;
  lp.y = lg.view;
  backend_.linear(lp);
  logits->resize(size_t(rows * config_.vocab_size));
  backend_.copy_to_host(logits->data(), lg.buffer.data(), logits->size() * sizeof(float));
}

}  // namespace v4rt::model
