// SPDX-License-Identifier: MIT
// The V4 attention sublayer (spec §5): query path, single latent KV (K = V) with the sliding window,
// the compressors (CSA ratio 4 with overlap, HCA ratio 128), the lightning indexer and its top-k,
// sparse attention with sink, inverse RoPE on the output and the grouped output projection.
// Every numeric step is a backend op; this file only decides shapes, positions and order.
#include <algorithm>
#include <cmath>

#include "common/check.h"
#include "model/blocks.h"

namespace v4rt::model {

namespace {

using kernels::view_cols;
using kernels::view_reshape;
using kernels::view_rows;

// An FP8-weight projection (act quant + bf16 output in the official mode) or an fp32 one.
void project(const BlockContext& ctx, const TensorView& x, const WeightView& w, const TensorView& y, bool fp8_path) {
  kernels::LinearParams p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.act_quant_fp8 = ctx.official && fp8_path;
  p.out_bf16 = ctx.official && fp8_path;
  ctx.backend.linear(p);
}

void norm(const BlockContext& ctx, const TensorView& x, const WeightView& w) {
  kernels::RmsNormParams p;
  p.x = x;
  p.y = x;
  p.weight = w;
  p.eps = float(ctx.config.rms_norm_eps);
  p.out_bf16 = ctx.official;
  ctx.backend.rms_norm(p);
}

void rope(const BlockContext& ctx, const TensorView& x, const std::vector<float>& inv_freq, int64_t pos_begin,
          int64_t pos_step, bool inverse) {
  kernels::RopeParams p;
  p.x = x;
  p.inv_freq = inv_freq.data();
  p.rope_dim = ctx.config.qk_rope_head_dim;
  p.pos_begin = pos_begin;
  p.pos_step = pos_step;
  p.inverse = inverse;
  p.out_bf16 = ctx.official;
  ctx.backend.rope(p);
}

void qdq(const BlockContext& ctx, const TensorView& x, kernels::QdqFormat format, int block) {
  kernels::QdqParams p;
  p.x = x;
  p.format = format;
  p.block = block;
  ctx.backend.qdq(p);
}

// Appends the chunk's projections to a compressor's token buffer, pools every completed block into
// a new entry (spec §5.4), post-processes the entries and appends them; drops the consumed rows.
void compressor_push(const BlockContext& ctx, const CompressorWeights& w, CompressorState& s, const TensorView& a,
                     int64_t pos_begin, const std::vector<float>& inv_freq, bool is_indexer) {
  const int64_t n = a.shape[0];
  const int m = w.ratio;
  CHECK_EQ(s.start + s.kv.rows(), pos_begin) << "compressor state out of step with the sequence";
  project(ctx, a, w.wkv, s.kv.reserve(n), false);
  s.kv.commit(n);
  project(ctx, a, w.wgate, s.score.reserve(n), false);
  s.score.commit(n);
  const int64_t lead = w.overlap ? m : 0;
  const int64_t num_entries = (s.kv.rows() - lead) / m;
  if (num_entries <= 0) return;
  const int64_t j0 = (s.start + lead) / m;
  CHECK_EQ(j0, s.entries.rows()) << "compressor entries out of step";
  const TensorView e = s.entries.reserve(num_entries);
  kernels::CompressorPoolParams pp;
  pp.kv = s.kv.view();
  pp.score = s.score.view();
  pp.ape = w.ape;
  pp.out = e;
  pp.ratio = m;
  pp.head_dim = w.head_dim;
  pp.overlap = w.overlap;
  pp.num_entries = num_entries;
  pp.out_bf16 = ctx.official;
  ctx.backend.compressor_pool(pp);
  norm(ctx, e, w.norm);
  rope(ctx, e, inv_freq, j0 * m, m, false);  // at each block's start position
  if (ctx.official) {
    if (is_indexer) {
      kernels::HadamardParams hp;
      hp.x = e;
      hp.out_bf16 = true;
      ctx.backend.hadamard(hp);
      qdq(ctx, e, kernels::QdqFormat::kFp4E2M1, 32);
    } else {
      qdq(ctx, view_cols(e, 0, ctx.config.nope_dim()), kernels::QdqFormat::kFp8E4M3, 64);
    }
  }
  s.entries.commit(num_entries);
  s.kv.drop_front(num_entries * m);
  s.score.drop_front(num_entries * m);
  s.start += num_entries * m;
}

}  // namespace

void attention_forward(const BlockContext& ctx, const LayerWeights& w, LayerState& state, int64_t pos_begin,
                       const TensorView& a, const TensorView& out) {
  const ModelConfig& cfg = ctx.config;
  kernels::Backend& be = ctx.backend;
  const AttentionWeights& aw = w.attn;
  const int64_t n = a.shape[0];
  const int64_t heads = cfg.num_attention_heads;
  const int64_t hd = cfg.head_dim;

  // --- query path (§5.1) ---
  Scratch qr = make_scratch(be, {n, cfg.q_lora_rank});
  project(ctx, a, aw.wq_a, qr.view, true);
  norm(ctx, qr.view, aw.q_norm);
  Scratch q = make_scratch(be, {n, heads, hd});
  project(ctx, qr.view, aw.wq_b, view_reshape(q.view, {n, heads * hd}), true);
  {
    kernels::RmsNormParams p;  // per-head, unweighted
    p.x = p.y = view_reshape(q.view, {n * heads, hd});
    p.eps = float(cfg.rms_norm_eps);
    p.bf16_arith = ctx.official;
    be.rms_norm(p);
  }
  rope(ctx, q.view, w.inv_freq, pos_begin, 1, false);

  // --- KV path and window (§5.2, §5.3) ---
  const int64_t tail = state.window_tail.rows();
  Scratch win = make_scratch(be, {tail + n, hd});
  if (tail > 0) be.copy_rows(view_rows(win.view, 0, tail), state.window_tail.view());
  const TensorView kv = view_rows(win.view, tail, tail + n);
  project(ctx, a, aw.wkv, kv, true);
  norm(ctx, kv, aw.kv_norm);
  rope(ctx, kv, w.inv_freq, pos_begin, 1, false);
  if (ctx.official) qdq(ctx, view_cols(kv, 0, cfg.nope_dim()), kernels::QdqFormat::kFp8E4M3, 64);
  const int64_t keep = std::min<int64_t>(tail + n, cfg.sliding_window - 1);
  state.window_tail.clear();
  be.copy_rows(state.window_tail.reserve(keep), view_rows(win.view, tail + n - keep, tail + n));
  state.window_tail.commit(keep);

  // --- compressors and indexer (§5.4, §5.5) ---
  // PARALLEL: under SP each rank appends only the entries it owns (SequenceState::ownership()).
  Scratch sel;
  if (aw.has_indexer) compressor_push(ctx, aw.indexer.compressor, state.indexer, a, pos_begin, w.inv_freq, true);
  if (aw.has_compressor) compressor_push(ctx, aw.compressor, state.main, a, pos_begin, w.inv_freq, false);
  if (aw.has_indexer && state.indexer.entries.rows() > 0) {
    const int64_t ih = cfg.index_n_heads;
    const int64_t id = cfg.index_head_dim;
    Scratch qi = make_scratch(be, {n, ih, id});
    // PARALLEL: indexer heads [begin, end) per TP rank; the scores are summed over ranks.
    project(ctx, qr.view, aw.indexer.wq_b, view_reshape(qi.view, {n, ih * id}), true);
    rope(ctx, qi.view, w.inv_freq, pos_begin, 1, false);
    if (ctx.official) {
      kernels::HadamardParams hp;
      hp.x = view_reshape(qi.view, {n * ih, id});
      hp.out_bf16 = true;
      be.hadamard(hp);
      qdq(ctx, hp.x, kernels::QdqFormat::kFp4E2M1, 32);
    }
    Scratch wts = make_scratch(be, {n, ih});
    {
      kernels::LinearParams p;  // bf16 GEMM in the official mode, no activation quantization
      p.x = a;
      p.w = aw.indexer.weights_proj;
      p.y = wts.view;
      p.out_bf16 = ctx.official;
      be.linear(p);
    }
    const int64_t num_keys = state.indexer.entries.rows();
    Scratch scores = make_scratch(be, {n, num_keys});
    kernels::IndexerScoresParams sp;
    sp.q = qi.view;
    sp.keys = state.indexer.entries.view();
    sp.w = wts.view;
    sp.scores = scores.view;
    sp.weight_scale = float(1.0 / std::sqrt(double(id)) / std::sqrt(double(ih)));
    sp.pos_begin = pos_begin;
    sp.ratio = 4;
    sp.bf16_arith = ctx.official;
    be.indexer_scores(sp);
    const int k = int(std::min<int64_t>(cfg.index_topk, num_keys));
    sel = make_scratch(be, {n, k}, DType::kI32);
    kernels::TopkParams tp;
    tp.scores = scores.view;
    tp.out_idx = sel.view;
    tp.k = k;
    be.topk(tp);
  }

  // --- sparse attention with sink (§5.6) ---
  Scratch o = make_scratch(be, {n, heads, hd});
  kernels::SparseAttentionParams ap;
  ap.q = q.view;
  ap.window_kv = win.view;
  ap.window_pos0 = pos_begin - tail;
  ap.window = cfg.sliding_window;
  if (aw.has_compressor && state.main.entries.rows() > 0) {
    ap.comp_kv = state.main.entries.view();
    if (aw.has_indexer) {
      ap.comp_idx = sel.view;  // empty when no indexer key exists yet
      if (!sel.view.data) ap.comp_kv = TensorView();
    } else {
      ap.comp_ratio = w.ratio;
    }
  }
  ap.sink = aw.sink;
  ap.out = o.view;
  ap.pos_begin = pos_begin;
  ap.softmax_scale = float(1.0 / std::sqrt(double(hd)));
  ap.bf16_probs = ctx.official;
  ap.out_bf16 = ctx.official;
  // PARALLEL: query heads [begin, end) per TP rank; under SP each rank attends over its own
  // compressed entries (include_sink on one rank) and the partial outputs merge by lse.
  be.sparse_attention(ap);
  rope(ctx, o.view, w.inv_freq, pos_begin, 1, true);

  // --- grouped output projection (§5.7) ---
  const int64_t groups = cfg.o_groups;
  Scratch u = make_scratch(be, {n, groups, cfg.o_lora_rank});
  kernels::GroupedLinearParams gp;
  gp.x = view_reshape(o.view, {n, groups, heads / groups * hd});
  gp.w = aw.wo_a;
  gp.y = u.view;
  gp.out_bf16 = ctx.official;
  // PARALLEL: wo_a groups [begin, end) per TP rank (the groups of its heads).
  be.grouped_linear(gp);
  project(ctx, view_reshape(u.view, {n, groups * cfg.o_lora_rank}), aw.wo_b, out, true);
  // PARALLEL: reduce — wo_b is row-split under TP: `out` is a partial sum, all-reduced here.
}

}  // namespace v4rt::model
