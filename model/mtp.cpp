// SPDX-License-Identifier: MIT
// The MTP block's forward (spec §7) over the main model's block functions, and its window state.
#include "model/mtp.h"

#include <glog/logging.h>

#include "common/check.h"
#include "common/op_scope.h"
#include "model/blocks.h"

namespace v4rt::model {

using kernels::view_reshape;
using kernels::view_rows;

MtpState::MtpState(const ModelConfig& config, kernels::Backend& backend) : config_(config), backend_(backend) {
  layer_.window_tail = RowTable(&backend, config.head_dim);
}

void MtpState::reset() {
  marked_ = false;
  position_ = 0;
  layer_.window_tail.clear();
}

std::unique_ptr<MtpState> MtpState::clone() const {
  CHECK(!marked_) << "cloning a marked MTP state";
  auto c = std::make_unique<MtpState>(config_, backend_);
  c->layer_.window_tail = layer_.window_tail.clone();
  c->position_ = position_;
  return c;
}

void MtpState::mark(int64_t max_tokens) {
  CHECK(!marked_) << "MTP state already marked";
  CHECK(max_tokens >= 1 && max_tokens < config_.sliding_window);
  window_mark_ = mark_window(backend_, layer_.window_tail, max_tokens);
  mark_position_ = position_;
  mark_max_ = max_tokens;
  marked_ = true;
}

void MtpState::rollback(int64_t position) {
  CHECK(marked_) << "MTP rollback without a mark";
  const int64_t chunk = position_ - mark_position_;
  CHECK(position >= mark_position_ && position <= position_ && chunk <= mark_max_);
  if (position < position_) {
    rollback_window(backend_, layer_.window_tail, window_mark_, chunk, position - mark_position_,
                    config_.sliding_window - 1);
    position_ = position;
  }
  release();
}

void MtpState::release() {
  CHECK(marked_) << "MTP release without a mark";
  window_mark_ = WindowMark();
  marked_ = false;
}

std::unique_ptr<Mtp> Mtp::load(const Checkpoint& ckpt, Model& model) {
  std::unique_ptr<Mtp> m(new Mtp(model));
  m->weights_ = load_mtp_weights(ckpt, model.backend(), model.shard());
  return m;
}

std::unique_ptr<MtpState> Mtp::new_state() const {
  return std::make_unique<MtpState>(model_.config(), model_.backend());
}

void Mtp::forward(MtpState& state, const TensorView& hidden, std::span<const int32_t> tokens, std::vector<float>* logits,
                  const TensorView& out_hidden) {
  const ModelConfig& cfg = model_.config();
  kernels::Backend& be = model_.backend();
  const int64_t n = int64_t(tokens.size());
  const int64_t hc = cfg.hc_mult;
  const int64_t d = cfg.hidden_size;
  CHECK(n >= 1 && hidden.numel() == n * hc * d) << "MTP input streams " << hidden.shape_str() << " for " << n << " tokens";
  for (int32_t id : tokens)
    V4RT_REQUIRE(id >= 0 && id < cfg.vocab_size, "token id " << id << " outside the vocabulary of " << cfg.vocab_size);
  const bool official = model_.options().numerics == Numerics::kOfficial;
  const OpScope scope("mtp");  // names ops in diagnostics
  const ParallelContext& par = model_.parallel();
  const BlockContext ctx{cfg, be, official, par.sharded() ? &par : nullptr, model_.expert_parallel(), model_.sp_ops(),
                         {}};
  const int64_t pos = state.position();
  auto norm = [&](const TensorView& v, const WeightView& w) {
    kernels::RmsNormParams p;
    p.x = p.y = v;
    p.weight = w;
    p.eps = float(cfg.rms_norm_eps);
    p.out_bf16 = official;
    be.rms_norm(p);
  };
  auto fp8_linear = [&](const TensorView& x, const WeightView& w, const TensorView& y) {
    kernels::LinearParams p;
    p.x = x;
    p.w = w;
    p.y = y;
    p.act_quant_fp8 = p.out_bf16 = official;
    be.linear(p);
  };

  // Fusion: X = e_proj(enorm(embed[next])) broadcast to the hc streams + h_proj(hnorm(X_main)).
  // The embedding is looked up once per stream (identical rows) so every step is a plain [n*hc, D]
  // op; the projection of identical rows gives identical rows.
  Scratch ids = make_scratch(be, {n}, DType::kI32);
  be.copy_to_device(ids.buffer.data(), tokens.data(), size_t(n) * sizeof(int32_t));
  Scratch e = make_scratch(be, {n, hc, d});
  kernels::EmbeddingParams ep;
  ep.table = model_.weights().embed;
  ep.ids = ids.view;
  ep.out = e.view;
  be.embedding(ep);
  const TensorView e_rows = view_reshape(e.view, {n * hc, d});
  norm(e_rows, weights_.enorm);
  Scratch h = make_scratch(be, {n, hc, d});
  const TensorView h_rows = view_reshape(h.view, {n * hc, d});
  be.copy_rows(view_reshape(h.view, {n, hc * d}), view_reshape(hidden, {n, hc * d}));
  norm(h_rows, weights_.hnorm);
  Scratch x = make_scratch(be, {n, hc, d});
  Scratch x2 = make_scratch(be, {n, hc, d});
  const TensorView x_rows = view_reshape(x.view, {n * hc, d});
  const TensorView x2_rows = view_reshape(x2.view, {n * hc, d});
  fp8_linear(e_rows, weights_.e_proj, x_rows);
  fp8_linear(h_rows, weights_.h_proj, x2_rows);
  kernels::AddParams ap;
  ap.a = x_rows;
  ap.b = x2_rows;
  ap.out = x_rows;
  ap.out_bf16 = official;
  be.add(ap);

  // The block (spec §3), window-only attention with the block's own state, score-routed MoE.
  const LayerWeights& lw = weights_.block;
  Scratch a = make_scratch(be, {n, d});
  Scratch o = make_scratch(be, {n, d});
  HcMix mix = hc_pre(ctx, lw.hc_attn, x.view, a.view);
  norm(a.view, lw.attn_norm);
  attention_forward(ctx, lw, state.layer(), EntryOwnership(), pos, a.view, o.view);
  hc_post(ctx, mix, o.view, x.view, x2.view);
  mix = hc_pre(ctx, lw.hc_ffn, x2.view, a.view);
  norm(a.view, lw.ffn_norm);
  moe_forward(ctx, lw, cfg.num_hidden_layers, a.view, ids.view, o.view);
  hc_post(ctx, mix, o.view, x2.view, x.view);
  state.advance(n);

  const TensorView last = view_rows(x.view, n - 1, n);
  if (out_hidden.data) {
    CHECK_EQ(out_hidden.numel(), hc * d) << "MTP output streams " << out_hidden.shape_str();
    be.copy_rows(view_reshape(out_hidden, {1, hc * d}), view_reshape(last, {1, hc * d}));
  }
  if (!logits) return;
  // The shared bf16 head of the main model, after the block's own hc_head and norm.
  const Scratch lg = lm_head(ctx, weights_.hc_head, weights_.norm, model_.weights().head, last);
  logits->resize(size_t(cfg.vocab_size));
  be.copy_to_host(logits->data(), lg.buffer.data(), logits->size() * sizeof(float));
}

}  // namespace v4rt::model
