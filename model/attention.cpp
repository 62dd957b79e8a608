// SPDX-License-Identifier: MIT
// The V4 attention sublayer (spec §5): query path, single latent KV (K = V) with the sliding window,
// the compressors (CSA ratio 4 with overlap, HCA ratio 128), the lightning indexer and its top-k,
// sparse attention with sink, inverse RoPE on the output and the grouped output projection.
// Every numeric step is a backend op; this file only decides shapes, positions and order.
#include <algorithm>
#include <cmath>

#include "common/check.h"
#include "model/blocks.h"
#include "parallel/sp.h"
#include "parallel/tp.h"

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

// Host copy of a contiguous F32 device view, and the way back.
std::vector<float> download(kernels::Backend& be, const TensorView& v) {
  CHECK(v.contiguous() && v.dtype == DType::kF32) << "download needs a contiguous F32 view " << v.shape_str();
  std::vector<float> host(size_t(v.numel()));
  if (!host.empty()) be.copy_to_host(host.data(), v.data, host.size() * sizeof(float));
  return host;
}
void upload(kernels::Backend& be, const std::vector<float>& host, const TensorView& v) {
  CHECK(v.contiguous() && v.numel() == int64_t(host.size())) << "upload into " << v.shape_str();
  if (!host.empty()) be.copy_to_device(v.data, host.data(), host.size() * sizeof(float));
}

// PARALLEL: reduce — sums a row-parallel partial result over the TP group, in place, on the
// backend's buffer (the TP Comm is on the backend's memory and stream).
void tp_reduce(const BlockContext& ctx, const TensorView& v) {
  if (!ctx.parallel || ctx.parallel->layout.tp == 1 || v.numel() == 0) return;
  parallel::tp_reduce_sum(*ctx.parallel->tp, v);
}

parallel::SpPartition partition_of(const EntryOwnership& own) {
  parallel::SpPartition part;
  part.sp_size = own.num_ranks;
  part.sp_idx = own.rank;
  part.block = int(own.block);
  return part;
}

// Appends the chunk's projections to a compressor's token buffer, pools every completed block into
// a new entry (spec §5.4), post-processes the entries and appends the ones this rank owns; drops
// the consumed rows.
// PARALLEL: under SP every rank runs the compressor (its state is small and the same everywhere);
// only the owner of an entry stores it (EntryOwnership).
// `kv` and `score` [n, c*d] are the chunk's wkv / wgate projections (computed once for the batch).
void compressor_push(const BlockContext& ctx, const CompressorWeights& w, CompressorState& s, const TensorView& kv,
                     const TensorView& score, int64_t pos_begin, const std::vector<float>& inv_freq, bool is_indexer,
                     const EntryOwnership& own) {
  const int64_t n = kv.shape[0];
  const int m = w.ratio;
  CHECK_EQ(s.start + s.kv.rows(), pos_begin) << "compressor state out of step with the sequence";
  const TensorView kv_dst = s.kv.reserve(n);
  if (kv_dst.data != kv.data) ctx.backend.copy_rows(kv_dst, kv);  // else projected in place
  s.kv.commit(n);
  const TensorView score_dst = s.score.reserve(n);
  if (score_dst.data != score.data) ctx.backend.copy_rows(score_dst, score);
  s.score.commit(n);
  const int64_t lead = w.overlap ? m : 0;
  const int64_t num_entries = (s.kv.rows() - lead) / m;
  if (num_entries <= 0) return;
  const int64_t j0 = (s.start + lead) / m;
  CHECK_EQ(j0, s.num_entries) << "compressor entries out of step";
  const bool keep_all = own.num_ranks == 1;
  Scratch staged;  // SP: all new entries, before the owned ones are kept
  if (!keep_all) staged = make_scratch(ctx.backend, {num_entries, w.head_dim});
  const TensorView e = keep_all ? s.entries.reserve(num_entries) : staged.view;
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
  if (keep_all) {
    s.entries.commit(num_entries);
  } else {
    for (int64_t j = j0; j < j0 + num_entries;) {  // runs of entries inside one ownership block
      const int64_t run_end = std::min(j0 + num_entries, (j / own.block + 1) * own.block);
      if (own.owns(j)) {
        ctx.backend.copy_rows(s.entries.reserve(run_end - j), view_rows(e, j - j0, run_end - j0));
        s.entries.commit(run_end - j);
      }
      j = run_end;
    }
  }
  s.num_entries += num_entries;
  s.kv.drop_front(num_entries * m);
  s.score.drop_front(num_entries * m);
  s.start += num_entries * m;
}

// The compressor's projections of every row of the batch: kv and score [N, c*d].
struct CompressorRows {
  Scratch kv, score;
};
CompressorRows compressor_project(const BlockContext& ctx, const CompressorWeights& w, const TensorView& a) {
  const int64_t n = a.shape[0];
  CompressorRows r;
  r.kv = make_scratch(ctx.backend, {n, w.wkv.rows});
  r.score = make_scratch(ctx.backend, {n, w.wgate.rows});
  project(ctx, a, w.wkv, r.kv.view, false);
  project(ctx, a, w.wgate, r.score.view, false);
  return r;
}

}  // namespace

void attention_forward(const BlockContext& ctx, const LayerWeights& w, LayerState& state, const EntryOwnership& own,
                       int64_t pos_begin, const TensorView& a, const TensorView& out) {
  AttentionSegment seg;
  seg.state = &state;
  seg.own = &own;
  seg.pos_begin = pos_begin;
  seg.rows = a.shape[0];
  attention_forward_batched(ctx, w, std::span<const AttentionSegment>(&seg, 1), a, out);
}

void attention_forward_batched(const BlockContext& ctx, const LayerWeights& w, std::span<const AttentionSegment> segs,
                               const TensorView& a, const TensorView& out) {
  const ModelConfig& cfg = ctx.config;
  kernels::Backend& be = ctx.backend;
  const AttentionWeights& aw = w.attn;
  const int64_t n = a.shape[0];  // rows of every segment
  const int64_t hd = cfg.head_dim;
  // PARALLEL: query heads, wq_b rows, wo_a groups and indexer heads are this TP rank's slice.
  const int64_t heads = aw.wq_b.rows / hd;
  {
    int64_t next = 0;
    for (const AttentionSegment& s : segs) {
      CHECK(s.state && s.own && s.rows > 0 && s.row_begin == next) << "attention segments must tile the rows in order";
      next += s.rows;
    }
    CHECK_EQ(next, n) << "attention segments cover " << next << " of " << n << " rows";
  }

  // --- query path (§5.1), all rows ---
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
  // --- KV latents (§5.2), all rows; a single sequence projects straight into its window rows ---
  const bool single = segs.size() == 1;
  std::vector<Scratch> wins(segs.size());
  Scratch kv_scratch;
  TensorView kv_all;
  if (single) {
    const int64_t tail = segs[0].state->window_tail.rows();
    wins[0] = make_scratch(be, {tail + n, hd});
    kv_all = view_rows(wins[0].view, tail, tail + n);
  } else {
    kv_scratch = make_scratch(be, {n, hd});
    kv_all = kv_scratch.view;
  }
  project(ctx, a, aw.wkv, kv_all, true);
  norm(ctx, kv_all, aw.kv_norm);
  for (const AttentionSegment& s : segs) {  // RoPE at each sequence's own positions
    const int64_t r0 = s.row_begin, r1 = s.row_begin + s.rows;
    rope(ctx, view_rows(q.view, r0, r1), w.inv_freq, s.pos_begin, 1, false);
    rope(ctx, view_rows(kv_all, r0, r1), w.inv_freq, s.pos_begin, 1, false);
  }
  if (ctx.official) qdq(ctx, view_cols(kv_all, 0, cfg.nope_dim()), kernels::QdqFormat::kFp8E4M3, 64);
  CompressorRows idx_rows, main_rows;  // several sequences: projected here, copied per sequence
  if (!single && aw.has_indexer) idx_rows = compressor_project(ctx, aw.indexer.compressor, a);
  if (!single && aw.has_compressor) main_rows = compressor_project(ctx, aw.compressor, a);
  // A compressor's rows of segment `s`: views of the batch projection, or (one sequence) the
  // projection made directly into the state's token buffers.
  auto compressor_rows = [&](const CompressorWeights& cw, CompressorState& st, const CompressorRows& rows,
                             const AttentionSegment& s, TensorView* kv, TensorView* score) {
    if (single) {
      *kv = st.kv.reserve(s.rows);
      project(ctx, a, cw.wkv, *kv, false);
      *score = st.score.reserve(s.rows);
      project(ctx, a, cw.wgate, *score, false);
    } else {
      *kv = view_rows(rows.kv.view, s.row_begin, s.row_begin + s.rows);
      *score = view_rows(rows.score.view, s.row_begin, s.row_begin + s.rows);
    }
  };

  // --- per sequence: window (§5.3), compressors (§5.4) ---
  std::vector<int64_t> tails(segs.size());
  bool any_index = false;
  for (size_t i = 0; i < segs.size(); ++i) {
    const AttentionSegment& s = segs[i];
    LayerState& state = *s.state;
    const int64_t r0 = s.row_begin, r1 = s.row_begin + s.rows, rows = s.rows;
    const int64_t tail = state.window_tail.rows();
    tails[i] = tail;
    if (!single) wins[i] = make_scratch(be, {tail + rows, hd});
    const TensorView& win = wins[i].view;
    if (tail > 0) be.copy_rows(view_rows(win, 0, tail), state.window_tail.view());
    if (!single) be.copy_rows(view_rows(win, tail, tail + rows), view_rows(kv_all, r0, r1));
    const int64_t keep = std::min<int64_t>(tail + rows, cfg.sliding_window - 1);
    state.window_tail.clear();
    be.copy_rows(state.window_tail.reserve(keep), view_rows(win, tail + rows - keep, tail + rows));
    state.window_tail.commit(keep);
    TensorView ckv, cscore;
    if (aw.has_indexer) {
      compressor_rows(aw.indexer.compressor, state.indexer, idx_rows, s, &ckv, &cscore);
      compressor_push(ctx, aw.indexer.compressor, state.indexer, ckv, cscore, s.pos_begin, w.inv_freq, true, *s.own);
    }
    if (aw.has_compressor) {
      compressor_rows(aw.compressor, state.main, main_rows, s, &ckv, &cscore);
      compressor_push(ctx, aw.compressor, state.main, ckv, cscore, s.pos_begin, w.inv_freq, false, *s.own);
    }
    if (aw.has_indexer && state.indexer.num_entries > 0 && state.indexer.entries.rows() > 0) any_index = true;
  }

  // --- indexer queries and weights (§5.5), all rows, when some sequence has keys to score ---
  const int64_t ih = aw.has_indexer ? aw.indexer.weights_proj.rows : 0;  // this TP rank's indexer heads
  const int64_t id = cfg.index_head_dim;
  Scratch qi, wts;
  if (any_index) {
    qi = make_scratch(be, {n, ih, id});
    project(ctx, qr.view, aw.indexer.wq_b, view_reshape(qi.view, {n, ih * id}), true);
    for (const AttentionSegment& s : segs)
      rope(ctx, view_rows(qi.view, s.row_begin, s.row_begin + s.rows), w.inv_freq, s.pos_begin, 1, false);
    if (ctx.official) {
      kernels::HadamardParams hp;
      hp.x = view_reshape(qi.view, {n * ih, id});
      hp.out_bf16 = true;
      be.hadamard(hp);
      qdq(ctx, hp.x, kernels::QdqFormat::kFp4E2M1, 32);
    }
    wts = make_scratch(be, {n, ih});
    kernels::LinearParams p;  // bf16 GEMM in the official mode, no activation quantization
    p.x = a;
    p.w = aw.indexer.weights_proj;
    p.y = wts.view;
    p.out_bf16 = ctx.official;
    be.linear(p);
  }

  // --- per sequence: indexer top-k (§5.5), sparse attention with sink (§5.6) ---
  Scratch o = make_scratch(be, {n, heads, hd});
  for (size_t i = 0; i < segs.size(); ++i) {
    const AttentionSegment& seg = segs[i];
    LayerState& state = *seg.state;
    const EntryOwnership& own = *seg.own;
    const int64_t r0 = seg.row_begin, r1 = seg.row_begin + seg.rows, rows = seg.rows;
    const int64_t pos_begin = seg.pos_begin;
    const bool sp = own.num_ranks > 1;
    CHECK(!sp || (ctx.parallel && ctx.parallel->sp)) << "SP-owned sequence without an SP group";
    const parallel::SpPartition part = partition_of(own);
    Scratch sel;
    const int64_t num_entries = aw.has_compressor ? state.main.num_entries : 0;  // over all SP ranks
    if (aw.has_indexer && state.indexer.num_entries > 0) {
      const int64_t num_keys = state.indexer.entries.rows();  // keys held here (all of them without SP)
      const int k = int(std::min<int64_t>(cfg.index_topk, state.indexer.num_entries));
      sel = make_scratch(be, {rows, k}, DType::kI32);
      Scratch scores;
      if (num_keys > 0) {
        scores = make_scratch(be, {rows, num_keys});
        kernels::IndexerScoresParams sp_params;
        sp_params.q = view_rows(qi.view, r0, r1);
        sp_params.keys = state.indexer.entries.view();
        sp_params.w = view_rows(wts.view, r0, r1);
        sp_params.scores = scores.view;
        // The scale uses the global head count: TP ranks sum partial scores of their heads.
        sp_params.weight_scale = float(1.0 / std::sqrt(double(id)) / std::sqrt(double(cfg.index_n_heads)));
        // NOTE: under SP the local keys are not contiguous in entry order, so the kernel's causal mask
        // (by key position) is switched off (every key "visible") and applied below by global index.
        sp_params.pos_begin = sp ? state.indexer.num_entries * 4 : pos_begin;
        sp_params.ratio = 4;
        sp_params.bf16_arith = ctx.official;
        be.indexer_scores(sp_params);
        // PARALLEL: indexer heads are split over TP: the partial scores are summed before the top-k.
        tp_reduce(ctx, scores.view);
      }
      if (!sp) {
        kernels::TopkParams tp;
        tp.scores = scores.view;
        tp.out_idx = sel.view;
        tp.k = k;
        be.topk(tp);
      } else {
        // PARALLEL: each SP rank scores its own keys; the ranks agree on the global top-k, and each
        // keeps the selected entries it holds (local index), -1 for the others'.
        std::vector<float> local = num_keys > 0 ? download(be, scores.view) : std::vector<float>();
        for (int64_t t = 0; t < rows; ++t) {
          const int64_t visible = (pos_begin + t + 1) / 4;
          for (int64_t j = 0; j < num_keys; ++j) {
            if (part.to_global(j) >= visible) local[size_t(t * num_keys + j)] = -INFINITY;
          }
        }
        std::vector<int64_t> top(size_t(rows * k));
        parallel::distributed_topk(*ctx.parallel->sp_host, part, local.data(), rows, num_keys, k, top.data());
        std::vector<int32_t> mine(top.size());
        for (size_t j = 0; j < top.size(); ++j) mine[j] = top[j] >= 0 && part.owns(top[j]) ? int32_t(part.to_local(top[j])) : -1;
        be.copy_to_device(sel.buffer.data(), mine.data(), mine.size() * sizeof(int32_t));
      }
    }

    const TensorView o_seg = view_rows(o.view, r0, r1);
    kernels::SparseAttentionParams ap;
    ap.q = view_rows(q.view, r0, r1);
    ap.window_kv = wins[i].view;
    ap.window_pos0 = pos_begin - tails[i];
    ap.window = cfg.sliding_window;
    Scratch hca_idx;
    if (aw.has_compressor && state.main.entries.rows() > 0) {
      ap.comp_kv = state.main.entries.view();
      if (aw.has_indexer) {
        ap.comp_idx = sel.view;  // empty when no indexer key exists yet
        if (!sel.view.data) ap.comp_kv = TensorView();
      } else if (!sp) {
        ap.comp_ratio = w.ratio;
      } else {
        // SP: the visible entries this rank holds, as an explicit list (local indices).
        const int64_t num_local = state.main.entries.rows();
        std::vector<int32_t> list(size_t(rows * num_local));
        for (int64_t t = 0; t < rows; ++t) {
          const int64_t visible = (pos_begin + t + 1) / w.ratio;
          for (int64_t j = 0; j < num_local; ++j) list[size_t(t * num_local + j)] = part.to_global(j) < visible ? int32_t(j) : -1;
        }
        hca_idx = make_scratch(be, {rows, num_local}, DType::kI32);
        be.copy_to_device(hca_idx.buffer.data(), list.data(), list.size() * sizeof(int32_t));
        ap.comp_idx = hca_idx.view;
      }
    }
    ap.sink = aw.sink;
    ap.out = o_seg;
    ap.pos_begin = pos_begin;
    ap.softmax_scale = float(1.0 / std::sqrt(double(hd)));
    ap.bf16_probs = ctx.official;
    ap.out_bf16 = ctx.official;
    // PARALLEL: under SP each rank attends over its own compressed entries (the window only on the
    // window rank, the sink on none) and the partial outputs merge by log-sum-exp, sink added once.
    // Layers without compressed entries yet are computed whole on every SP rank.
    const bool merge = sp && num_entries > 0;
    Scratch lse;
    if (merge) {
      ap.include_sink = false;
      if (part.sp_idx != parallel::SpPartition::window_rank()) ap.window = 0;  // no window rows
      ap.out_bf16 = false;
      lse = make_scratch(be, {rows, heads});
      ap.lse = lse.view;
    }
    be.sparse_attention(ap);
    if (merge) {
      const std::vector<float> o_host = download(be, o_seg);
      const std::vector<float> lse_host = download(be, lse.view);
      const int64_t hrows = rows * heads, width = parallel::partial_width(hd);
      std::vector<float> partial(size_t(hrows * width), 0.0f);
      for (int64_t r = 0; r < hrows; ++r) {
        float* p = &partial[size_t(r * width)];
        const float l = lse_host[size_t(r)];
        if (!(l > -INFINITY)) {  // nothing attended here: the empty partial
          p[0] = -INFINITY;
          continue;
        }
        p[0] = l;  // normalised output with its log-sum-exp = {max l, sum 1, acc o}
        p[1] = 1.0f;
        std::copy_n(&o_host[size_t(r * hd)], hd, p + 2);
      }
      std::vector<float> merged(size_t(hrows * hd));
      parallel::attention_merge(*ctx.parallel->sp_host, partial.data(), aw.sink_host.data(), hrows, heads, hd, merged.data());
      if (ctx.official) {
        for (float& v : merged) v = round_bf16(v);
      }
      upload(be, merged, o_seg);
    }
    rope(ctx, o_seg, w.inv_freq, pos_begin, 1, true);
  }

  // --- grouped output projection (§5.7), all rows ---
  const int64_t groups = aw.wo_a.rows / cfg.o_lora_rank;  // this TP rank's groups
  Scratch u = make_scratch(be, {n, groups, cfg.o_lora_rank});
  kernels::GroupedLinearParams gp;
  gp.x = view_reshape(o.view, {n, groups, heads / groups * hd});
  gp.w = aw.wo_a;
  gp.y = u.view;
  gp.out_bf16 = ctx.official;
  be.grouped_linear(gp);
  // PARALLEL: reduce — wo_b is row-split under TP: `out` is a partial sum, all-reduced here; in the
  // official numerics the bf16 rounding applies to the sum, not to the partials.
  const bool row_parallel = ctx.parallel && ctx.parallel->layout.tp > 1;
  {
    kernels::LinearParams p;
    p.x = view_reshape(u.view, {n, groups * cfg.o_lora_rank});
    p.w = aw.wo_b;
    p.y = out;
    p.act_quant_fp8 = ctx.official;
    p.out_bf16 = ctx.official && !row_parallel;
    be.linear(p);
  }
  tp_reduce(ctx, out);
  if (ctx.official && row_parallel) qdq(ctx, out, kernels::QdqFormat::kBf16, 128);
}

}  // namespace v4rt::model
