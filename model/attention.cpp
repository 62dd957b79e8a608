// SPDX-License-Identifier: MIT
// The V4 attention sublayer (spec §5): query path, single latent KV (K = V) with the sliding window,
// the compressors (model/compressor.cpp: CSA ratio 4 with overlap, HCA ratio 128), the lightning
// indexer and its top-k, sparse attention with sink, inverse RoPE on the output and the grouped
// output projection.
// Every numeric step is a backend op; this file only decides shapes, positions and order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/op_scope.h"
#include "model/attention_ops.h"
#include "model/blocks.h"
#include "model/compressor.h"
#include "parallel/sp.h"
#include "parallel/tp.h"

namespace v4rt::model {

namespace {

using kernels::view_cols;
using kernels::view_reshape;
using kernels::view_rows;
using attn::compressors_update;
using attn::copy_rows_batch;
using attn::norm;
using attn::project;
using attn::qdq;
using attn::rope;
using attn::RowPositions;

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

// ------------------------------------------------------------------------------------------------
// The steps of one batched attention call, in call order: query path, window update, compressors,
// indexer queries, indexer select and attend (together for the sequences without SP, per sequence
// under SP), and the output projection.
// ------------------------------------------------------------------------------------------------

void check_segments(std::span<const AttentionSegment> segs, int64_t n) {
  int64_t next = 0;
  for (const AttentionSegment& s : segs) {
    CHECK(s.state && s.own && s.rows > 0 && s.row_begin == next) << "attention segments must tile the rows in order";
    next += s.rows;
  }
  CHECK_EQ(next, n) << "attention segments cover " << next << " of " << n << " rows";
}

// True when the sequence's compressed entries are spread over SP ranks (checked against the context).
bool sp_owned(const BlockContext& ctx, const AttentionSegment& seg) {
  const bool sp = seg.own->num_ranks > 1;
  CHECK(!sp || (ctx.parallel && ctx.parallel->sp)) << "SP-owned sequence without an SP group";
  return sp;
}

// PARALLEL: query heads, wq_b rows, wo_a groups and indexer heads are this TP rank's slice.
int64_t local_heads(const BlockContext& ctx, const AttentionWeights& aw) { return aw.wq_b.rows / ctx.config.head_dim; }

// Query path (§5.1), all rows: qr = norm(a @ wq_a) [n, q_lora_rank] (the indexer queries start
// from it), q = per-head unweighted norm(qr @ wq_b) [n, heads, head_dim], RoPE'd at each sequence's
// own positions.
struct Queries {
  Scratch qr;
  Scratch q;
};
Queries query_path(const BlockContext& ctx, const LayerWeights& w, const RowPositions& positions, const TensorView& a) {
  const ModelConfig& cfg = ctx.config;
  const AttentionWeights& aw = w.attn;
  const int64_t n = a.shape[0], hd = cfg.head_dim, heads = local_heads(ctx, aw);
  Queries q;
  q.qr = make_scratch(ctx.backend, {n, cfg.q_lora_rank}, rounded_dtype(ctx));  // wq_a and q_norm round to bf16
  project(ctx, a, aw.wq_a, q.qr.view, true);
  norm(ctx, q.qr.view, aw.q_norm);
  q.q = make_scratch(ctx.backend, {n, heads, hd}, rounded_dtype(ctx));  // wq_b, the norm and RoPE round to bf16
  project(ctx, q.qr.view, aw.wq_b, view_reshape(q.q.view, {n, heads * hd}), true);
  kernels::RmsNormParams p;  // per-head, unweighted
  p.x = p.y = view_reshape(q.q.view, {n * heads, hd});
  p.eps = float(cfg.rms_norm_eps);
  p.bf16_arith = ctx.official;
  ctx.backend.rms_norm(p);
  rope(ctx, q.q.view, w.inv_freq, positions, false);
  return q;
}

// Window update (§5.2, §5.3): the KV latents of all rows (wkv, norm, RoPE at each sequence's
// positions, FP8 qdq of the nope part in the official mode); per sequence, its attention window
// rows (the state's tail, then the new rows) and the new tail (the last sliding_window - 1 rows).
// Chunks of up to kWindowInPlaceRows rows (decode steps) append to the tail's table and read the
// window straight from it; dropping the rows past the window then copies nothing (RowTable's head
// offset), so a decode step moves only its new rows. Longer chunks (prefill) build the window rows
// in scratch (the table would otherwise keep a chunk's worth of rows) and copy the new tail back.
// A single sequence projects straight into its window rows.
struct Windows {
  std::vector<Scratch> rows;      // [i]: the window rows when built in scratch
  std::vector<TensorView> view;   // [i]: [tail[i] + segs[i].rows, head_dim], oldest first
  std::vector<int64_t> tail;      // [i]: rows the window held before this call
};
Windows window_update(const BlockContext& ctx, const LayerWeights& w, std::span<const AttentionSegment> segs,
                      const RowPositions& positions, const TensorView& a) {
  const ModelConfig& cfg = ctx.config;
  kernels::Backend& be = ctx.backend;
  const int64_t n = a.shape[0], hd = cfg.head_dim;
  const bool single = segs.size() == 1;
  Windows win;
  win.rows.resize(segs.size());
  win.view.resize(segs.size());
  win.tail.resize(segs.size());
  std::vector<bool> in_place(segs.size());
  for (size_t i = 0; i < segs.size(); ++i) {
    win.tail[i] = segs[i].state->window_tail.rows();
    in_place[i] = segs[i].rows <= kWindowInPlaceRows;
  }
  // The window rows' room: in the tail's table (whose rows may move to the front or to a larger
  // buffer now, one batch of copies for every sequence, before any row of this call is written) or
  // in scratch.
  std::vector<RowReserve> room;
  for (size_t i = 0; i < segs.size(); ++i)
    if (in_place[i]) room.push_back({&segs[i].state->window_tail, segs[i].rows, window_table_rows(cfg)});
  RowTable::reserve_batch(room);
  for (size_t i = 0; i < segs.size(); ++i) {
    const int64_t tail = win.tail[i], rows = segs[i].rows;
    if (in_place[i]) {
      win.view[i] = segs[i].state->window_tail.rows_view(0, tail + rows);
    } else {
      win.rows[i] = make_scratch(be, {tail + rows, hd});
      win.view[i] = win.rows[i].view;
    }
  }
  Scratch kv_scratch;
  TensorView kv_all;
  if (single) {
    kv_all = view_rows(win.view[0], win.tail[0], win.tail[0] + n);
  } else {
    kv_scratch = make_scratch(be, {n, hd});
    kv_all = kv_scratch.view;
  }
  project(ctx, a, w.attn.wkv, kv_all, true);
  norm(ctx, kv_all, w.attn.kv_norm);
  rope(ctx, kv_all, w.inv_freq, positions, false);
  if (ctx.official) qdq(ctx, view_cols(kv_all, 0, cfg.nope_dim()), kernels::QdqFormat::kFp8E4M3, 64);

  std::vector<kernels::RowCopy> copies;  // window rows: the old tail (scratch windows), then the new rows
  for (size_t i = 0; i < segs.size(); ++i) {
    const AttentionSegment& s = segs[i];
    const int64_t tail = win.tail[i], rows = s.rows;
    if (!in_place[i] && tail > 0) copies.push_back({view_rows(win.view[i], 0, tail), s.state->window_tail.view()});
    if (!single)
      copies.push_back({view_rows(win.view[i], tail, tail + rows), view_rows(kv_all, s.row_begin, s.row_begin + rows)});
  }
  copy_rows_batch(ctx, copies);
  copies.clear();  // new tails: the last rows of each window (scratch windows: into emptied tables
  room.clear();    // of the decode steps' room)
  for (size_t i = 0; i < segs.size(); ++i) {
    RowTable& window_tail = segs[i].state->window_tail;
    const int64_t end = win.tail[i] + segs[i].rows;
    const int64_t keep = std::min<int64_t>(end, cfg.sliding_window - 1);
    if (in_place[i]) {  // the rows stay where the window view reads them
      window_tail.commit(segs[i].rows);
      window_tail.skip_front(end - keep);
      continue;
    }
    window_tail.clear();
    room.push_back({&window_tail, keep, window_table_rows(cfg)});
  }
  RowTable::reserve_batch(room);
  for (size_t i = 0; i < segs.size(); ++i) {
    if (in_place[i]) continue;
    RowTable& window_tail = segs[i].state->window_tail;
    const int64_t end = win.tail[i] + segs[i].rows;
    const int64_t keep = std::min<int64_t>(end, cfg.sliding_window - 1);
    copies.push_back({window_tail.reserve(keep), view_rows(win.view[i], end - keep, end)});
    window_tail.commit(keep);
  }
  copy_rows_batch(ctx, copies);
  return win;
}


// Indexer queries and weights (§5.5), all rows: q [n, ih, index_head_dim] from qr (RoPE'd at each
// row's position; Hadamard + FP4 qdq in the official mode) and the per-head weights [n, ih]
// (ih: this TP rank's indexer heads).
struct IndexerQueries {
  Scratch q;
  Scratch weights;
};
IndexerQueries indexer_queries(const BlockContext& ctx, const LayerWeights& w, const RowPositions& positions,
                               const TensorView& a, const TensorView& qr) {
  const AttentionWeights& aw = w.attn;
  const int64_t n = a.shape[0], ih = aw.indexer.weights_proj.rows, id = ctx.config.index_head_dim;
  IndexerQueries iq;
  iq.q = make_scratch(ctx.backend, {n, ih, id});
  project(ctx, qr, aw.indexer.wq_b, view_reshape(iq.q.view, {n, ih * id}), true);
  rope(ctx, iq.q.view, w.inv_freq, positions, false);
  if (ctx.official) {
    kernels::HadamardParams hp;
    hp.x = view_reshape(iq.q.view, {n * ih, id});
    hp.out_bf16 = true;
    ctx.backend.hadamard(hp);
    qdq(ctx, hp.x, kernels::QdqFormat::kFp4E2M1, 32);
  }
  iq.weights = make_scratch(ctx.backend, {n, ih});
  kernels::LinearParams p;  // bf16 GEMM in the official mode, no activation quantization
  p.x = a;
  p.w = aw.indexer.weights_proj;
  p.y = iq.weights.view;
  p.out_bf16 = ctx.official;
  p.x_bf16_exact = ctx.official;  // the normed sublayer input
  ctx.backend.linear(p);
  return iq;
}

// The indexer score call (§5.5) of one sequence: its rows of the indexer queries against the keys
// held here, into `scores` [rows, keys held].
// NOTE: under SP the local keys are not contiguous in entry order, so the kernel's causal mask (by
// key position) is switched off (every key "visible") and applied by global index in sp_select.
kernels::IndexerScoresParams indexer_scores_params(const BlockContext& ctx, const AttentionSegment& seg, bool sp,
                                                   const IndexerQueries& iq, const TensorView& scores) {
  const ModelConfig& cfg = ctx.config;
  const CompressorState& indexer = seg.state->indexer;
  kernels::IndexerScoresParams p;
  p.q = view_rows(iq.q.view, seg.row_begin, seg.row_begin + seg.rows);
  p.keys = indexer.entries.view();
  p.key_layout = indexer.layout;
  p.key_blocks = indexer.entries.blocks();
  p.w = view_rows(iq.weights.view, seg.row_begin, seg.row_begin + seg.rows);
  p.scores = scores;
  // The scale uses the global head count: TP ranks sum partial scores of their heads.
  p.weight_scale = float(1.0 / std::sqrt(double(cfg.index_head_dim)) / std::sqrt(double(cfg.index_n_heads)));
  p.pos_begin = sp ? indexer.num_entries * 4 : seg.pos_begin;
  p.ratio = 4;
  p.bf16_arith = ctx.official;
  return p;
}

// Entries the indexer selects per query of a sequence: min(index_topk, entries so far).
int indexer_k(const BlockContext& ctx, const AttentionSegment& seg) {
  return int(std::min<int64_t>(ctx.config.index_topk, seg.state->indexer.num_entries));
}

// Indexer select (§5.5) for one SP-owned sequence: the compressed entries its rows attend to,
// [rows, k] I32 (k = indexer_k), -1 for none. Empty when the layer has no indexer or no indexer
// entry exists yet.
// PARALLEL: TP ranks sum their heads' partial scores before the top-k; each SP rank scores its own
// keys, the ranks agree on the global top-k, and each keeps the selected entries it holds (local
// index), -1 for the others'.
Scratch indexer_select(const BlockContext& ctx, const LayerWeights& w, const AttentionSegment& seg,
                       const IndexerQueries& iq) {
  kernels::Backend& be = ctx.backend;
  const CompressorState& indexer = seg.state->indexer;
  Scratch sel;
  if (!w.attn.has_indexer || indexer.num_entries == 0) return sel;
  const int64_t rows = seg.rows;
  const int64_t num_keys = indexer.entries.rows();  // keys held here
  const int k = indexer_k(ctx, seg);
  sel = make_scratch(be, {rows, k}, DType::kI32);
  Scratch scores;
  if (num_keys > 0) {
    scores = make_scratch(be, {rows, num_keys});
    be.indexer_scores(indexer_scores_params(ctx, seg, true, iq, scores.view));
    tp_reduce(ctx, scores.view);
  }
  parallel::sp_select(*ctx.parallel->sp, *ctx.sp_ops, be, partition_of(*seg.own), scores.view, rows, seg.pos_begin, 4, k,
                      sel.view);
  return sel;
}

// SP: the visible main-compressor entries this rank holds, as an explicit candidate list [rows,
// local entries] I32 (local indices, -1 for entries not visible yet).
Scratch sp_visible_entries(const BlockContext& ctx, const AttentionSegment& seg, int ratio) {
  const parallel::SpPartition part = partition_of(*seg.own);
  const int64_t rows = seg.rows, num_local = seg.state->main.entries.rows();
  Scratch idx = make_scratch(ctx.backend, {rows, num_local}, DType::kI32);
  ctx.sp_ops->visible_list(static_cast<int32_t*>(idx.buffer.data()), rows, num_local, part, seg.pos_begin, ratio);
  return idx;
}

// PARALLEL: merges the SP ranks' partial outputs o [rows, heads, head_dim] (each normalised, with
// its log-sum-exp lse [rows, heads]) by log-sum-exp, the sink added once; o is overwritten.
void sp_merge(const BlockContext& ctx, const AttentionWeights& aw, const TensorView& o, const TensorView& lse) {
  CHECK(aw.sink.dtype == DType::kF32 && aw.sink.device == ctx.backend.device()) << "attention sink: F32 on the backend";
  parallel::sp_attention_merge(*ctx.parallel->sp, *ctx.sp_ops, ctx.backend, o, lse, static_cast<const float*>(aw.sink.data),
                               ctx.official);
}

// The sparse attention call (§5.6) of one sequence with all its compressed entries held here: q
// [rows, heads, head_dim] over its window rows and compressed candidates (the indexer's selection
// `sel` [rows, >= k] I32, or every visible entry of a compressor without indexer) into o.
kernels::SparseAttentionParams attention_params(const BlockContext& ctx, const LayerWeights& w, const AttentionSegment& seg,
                                                const TensorView& q, const TensorView& window_rows, int64_t window_tail,
                                                const TensorView& sel, const TensorView& o) {
  const ModelConfig& cfg = ctx.config;
  const AttentionWeights& aw = w.attn;
  const LayerState& state = *seg.state;
  kernels::SparseAttentionParams ap;
  ap.q = q;
  ap.window_kv = window_rows;
  ap.window_pos0 = seg.pos_begin - window_tail;
  ap.window = cfg.sliding_window;
  if (aw.has_compressor && state.main.entries.rows() > 0) {
    ap.comp_kv = state.main.entries.view();
    ap.comp_layout = state.main.layout;
    ap.comp_blocks = state.main.entries.blocks();
    if (aw.has_indexer) {
      ap.comp_idx = sel;  // empty when no indexer key exists yet
      if (!sel.data) {
        ap.comp_kv = TensorView();
        ap.comp_blocks = {};
      }
    } else {
      ap.comp_ratio = w.ratio;
    }
  }
  ap.sink = aw.sink;
  ap.out = o;
  ap.pos_begin = seg.pos_begin;
  ap.softmax_scale = float(1.0 / std::sqrt(double(cfg.head_dim)));
  ap.bf16_probs = ctx.official;
  ap.out_bf16 = ctx.official;
  return ap;
}

// Attend (§5.6) for one SP-owned sequence: sparse attention with sink of q [rows, heads, head_dim]
// over its window rows and compressed candidates into o (the inverse RoPE follows, over all rows).
// PARALLEL: each SP rank attends over its own compressed entries (the window only on the window
// rank, the sink on none) and the partial outputs merge by log-sum-exp, sink added once. Layers
// without compressed entries yet are computed whole on every SP rank.
void attend(const BlockContext& ctx, const LayerWeights& w, const AttentionSegment& seg, const TensorView& q,
            const TensorView& window_rows, int64_t window_tail, const Scratch& sel, const TensorView& o) {
  const AttentionWeights& aw = w.attn;
  kernels::SparseAttentionParams ap = attention_params(ctx, w, seg, q, window_rows, window_tail, sel.view, o);
  Scratch hca_idx;
  if (ap.comp_ratio > 0) {  // the entries are spread over the ranks: the visible ones held here, listed
    hca_idx = sp_visible_entries(ctx, seg, w.ratio);
    ap.comp_idx = hca_idx.view;
    ap.comp_ratio = 0;
  }
  const int64_t num_entries = aw.has_compressor ? seg.state->main.num_entries : 0;  // over all SP ranks
  const bool merge = num_entries > 0;
  Scratch lse;
  if (merge) {
    ap.include_sink = false;
    if (partition_of(*seg.own).sp_idx != parallel::SpPartition::window_rank()) ap.window = 0;  // no window rows
    ap.out_bf16 = false;
    lse = make_scratch(ctx.backend, {seg.rows, o.shape[1]});
    ap.lse = lse.view;
  }
  ctx.backend.sparse_attention(ap);
  if (merge) sp_merge(ctx, aw, o, lse.view);
}

// Indexer select and attend (§5.5, §5.6) of the sequences that hold all their compressed entries
// (segs[i] for i in `local`), as one indexer-score call, one top-k and one sparse attention call
// for all of them (the batched ops: one launch each on a device): the scores of every sequence
// with indexer keys fill its rows of one [rows, most keys] buffer (-inf past its own keys); the
// top-k takes the largest k of the batch, so a sequence with fewer entries gets -1 past its own k
// (every one of its finite scores is selected either way), which attention skips exactly as the
// end of a shorter list. (The inverse RoPE of the output follows, over all rows at once.)
// PARALLEL: TP ranks sum their heads' partial scores before the top-k.
void attend_local(const BlockContext& ctx, const LayerWeights& w, std::span<const AttentionSegment> segs,
                  const std::vector<size_t>& local, const TensorView& q, const IndexerQueries& iq, const Windows& windows,
                  const TensorView& o) {
  kernels::Backend& be = ctx.backend;
  std::vector<int64_t> sel_row(segs.size(), -1);  // first row of segs[i] in the scores and selection
  Scratch sel;
  {
    const OpScope scope("indexer_select");
    int64_t rows = 0, max_keys = 0;
    int k = 0;
    for (size_t i : local) {
      if (!w.attn.has_indexer || segs[i].state->indexer.num_entries == 0) continue;
      sel_row[i] = rows;
      rows += segs[i].rows;
      max_keys = std::max(max_keys, segs[i].state->indexer.entries.rows());
      k = std::max(k, indexer_k(ctx, segs[i]));
    }
    if (rows > 0) {
      // bf16 where the backend takes it: every score is a bf16 value (official numerics), half the
      // bytes written and read by the top-k; F32 when TP ranks sum partial scores.
      const bool tp_split = ctx.parallel && ctx.parallel->layout.tp > 1;
      Scratch scores = make_scratch(be, {rows, max_keys}, tp_split ? DType::kF32 : rounded_dtype(ctx));
      std::vector<kernels::IndexerScoresParams> parts;
      bool ragged = false;  // some sequence has fewer keys: its columns past them must read -inf
      for (size_t i : local) {
        if (sel_row[i] < 0) continue;
        const int64_t keys = segs[i].state->indexer.entries.rows();
        ragged = ragged || keys < max_keys;
        const TensorView rows_view = view_rows(scores.view, sel_row[i], sel_row[i] + segs[i].rows);
        parts.push_back(indexer_scores_params(ctx, segs[i], false, iq, view_cols(rows_view, 0, keys)));
      }
      if (ragged) be.fill(scores.view, -INFINITY);
      if (parts.size() == 1) be.indexer_scores(parts[0]);
      else be.indexer_scores_batch({parts.data(), int64_t(parts.size())});
      tp_reduce(ctx, scores.view);
      sel = make_scratch(be, {rows, k}, DType::kI32);
      kernels::TopkParams tp;
      tp.scores = scores.view;
      tp.out_idx = sel.view;
      tp.k = k;
      be.topk(tp);
    }
  }
  const OpScope scope("attend");
  std::vector<kernels::SparseAttentionParams> parts;
  for (size_t i : local) {
    const AttentionSegment& s = segs[i];
    const TensorView s_sel = sel_row[i] < 0 ? TensorView() : view_rows(sel.view, sel_row[i], sel_row[i] + s.rows);
    parts.push_back(attention_params(ctx, w, s, view_rows(q, s.row_begin, s.row_begin + s.rows), windows.view[i],
                                     windows.tail[i], s_sel, view_rows(o, s.row_begin, s.row_begin + s.rows)));
  }
  if (parts.size() == 1) be.sparse_attention(parts[0]);
  else be.sparse_attention_batch({parts.data(), int64_t(parts.size())});
}

// Output projection (§5.7), all rows: grouped wo_a over o [n, heads, head_dim], then wo_b into out.
// PARALLEL: reduce — wo_b is row-split under TP: `out` is a partial sum, all-reduced here; in the
// official numerics the bf16 rounding applies to the sum, not to the partials.
void output_projection(const BlockContext& ctx, const AttentionWeights& aw, const TensorView& o, const TensorView& out) {
  const ModelConfig& cfg = ctx.config;
  const int64_t n = o.shape[0], heads = o.shape[1];
  const int64_t groups = aw.wo_a.rows / cfg.o_lora_rank;  // this TP rank's groups
  Scratch u = make_scratch(ctx.backend, {n, groups, cfg.o_lora_rank}, rounded_dtype(ctx));
  kernels::GroupedLinearParams gp;
  gp.x = view_reshape(o, {n, groups, heads / groups * cfg.head_dim});
  gp.w = aw.wo_a;
  gp.y = u.view;
  gp.out_bf16 = ctx.official;
  gp.x_bf16_exact = ctx.official;  // bf16(acc / den), then the inverse RoPE rounded to bf16
  ctx.backend.grouped_linear(gp);
  const bool row_parallel = ctx.parallel && ctx.parallel->layout.tp > 1;
  kernels::LinearParams p;
  p.x = view_reshape(u.view, {n, groups * cfg.o_lora_rank});
  p.w = aw.wo_b;
  p.y = out;
  p.act_quant_fp8 = ctx.official;
  p.out_bf16 = ctx.official && !row_parallel;
  ctx.backend.linear(p);
  tp_reduce(ctx, out);
  if (ctx.official && row_parallel) qdq(ctx, out, kernels::QdqFormat::kBf16, 128);
}

}  // namespace

Scratch row_positions(kernels::Backend& backend, std::span<const AttentionSegment> segs) {
  std::vector<int32_t> pos;
  for (const AttentionSegment& s : segs) {
    CHECK_EQ(s.row_begin, int64_t(pos.size())) << "attention segments must tile the rows in order";
    CHECK_LE(s.pos_begin + s.rows, int64_t(INT32_MAX)) << "row positions are I32";
    for (int64_t r = 0; r < s.rows; ++r) pos.push_back(int32_t(s.pos_begin + r));
  }
  Scratch out = make_scratch(backend, {int64_t(pos.size())}, DType::kI32);
  backend.copy_to_device(out.buffer.data(), pos.data(), pos.size() * sizeof(int32_t));
  return out;
}

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
  // Each step opens an OpScope of its name, so diagnostics (debug.check_finite, debug.dump_dir)
  // name the step of an op as well as its layer.
  const int64_t n = a.shape[0];
  check_segments(segs, n);
  // RoPE of all rows in one call: a single segment rotates from its pos_begin, several at the rows'
  // positions, which the step uploaded once for every layer.
  RowPositions positions;
  if (segs.size() == 1) {
    positions.pos_begin = segs[0].pos_begin;
  } else if (segs.size() > 1) {
    const TensorView& pv = ctx.row_positions;
    CHECK(pv.data && pv.dtype == DType::kI32 && pv.numel() == n)
        << "several attention segments need BlockContext::row_positions (I32 [" << n << "]), got " << pv.shape_str();
    positions.rows = static_cast<const int32_t*>(pv.data);
  }
  Queries q;
  {
    const OpScope scope("query");
    q = query_path(ctx, w, positions, a);
  }
  Windows windows;
  {
    const OpScope scope("window");
    windows = window_update(ctx, w, segs, positions, a);
  }
  bool any_index = false;
  {
    const OpScope scope("compressors");
    any_index = compressors_update(ctx, w, segs, a);
  }
  IndexerQueries iq;
  if (any_index) {
    const OpScope scope("indexer_query");
    iq = indexer_queries(ctx, w, positions, a, q.qr.view);
  }
  // o: rounded to bf16 by the attention and the inverse RoPE, unless an SP merge adds F32 partials.
  bool any_sp = false;
  for (const AttentionSegment& s : segs) any_sp = any_sp || sp_owned(ctx, s);
  Scratch o = make_scratch(ctx.backend, {n, local_heads(ctx, w.attn), ctx.config.head_dim},
                           any_sp ? DType::kF32 : rounded_dtype(ctx));
  std::vector<size_t> local;  // sequences holding all their compressed entries: selected and attended together
  for (size_t i = 0; i < segs.size(); ++i) {
    const AttentionSegment& s = segs[i];
    if (!sp_owned(ctx, s)) {
      local.push_back(i);
      continue;
    }
    Scratch sel;
    {
      const OpScope scope("indexer_select");
      sel = indexer_select(ctx, w, s, iq);
    }
    const OpScope scope("attend");
    attend(ctx, w, s, view_rows(q.q.view, s.row_begin, s.row_begin + s.rows), windows.view[i], windows.tail[i], sel,
           view_rows(o.view, s.row_begin, s.row_begin + s.rows));
  }
  if (!local.empty()) attend_local(ctx, w, segs, local, q.q.view, iq, windows, o.view);
  {
    const OpScope scope("attend");
    rope(ctx, o.view, w.inv_freq, positions, true);  // inverse, on the output of every sequence
  }
  const OpScope scope("output");
  output_projection(ctx, w.attn, o.view, out);
}

}  // namespace v4rt::model
