// SPDX-License-Identifier: MIT
// The compressors (see compressor.h): appends, pooling of completed blocks one sequence at a time
// (under SP, where each rank keeps the entries it owns) or of a whole decode batch at once, and the
// post-pool numerics.
#include "model/compressor.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "common/check.h"
#include "model/attention_ops.h"

namespace v4rt::model::attn {
namespace {

using kernels::view_cols;
using kernels::view_rows;

// Appends the new entries e [n, d] (F32, as the numerics rounded them; entry indices j0 .. j0 + n)
// that this rank owns to the state's table, in its row format: compact rows are packed first
// (lossless: the rounding made every value exactly a value of the format), then the rows, or under
// SP the runs of rows this rank owns, are copied into the table in one batch.
void keep_new_entries(const BlockContext& ctx, CompressorState& s, const TensorView& e, int64_t j0,
                      const EntryOwnership& own) {
  const int64_t n = e.shape[0];
  TensorView rows = e;
  Scratch packed;
  if (s.layout.compact()) {
    packed = make_scratch(ctx.backend, {n, s.layout.row_bytes}, DType::kU8);
    kernels::KvPackParams kp;
    kp.x = e;
    kp.out = packed.view;
    kp.layout = s.layout;
    ctx.backend.kv_pack(kp);
    rows = packed.view;
  }
  std::vector<kernels::RowCopy> copies;
  for (int64_t j = j0; j < j0 + n;) {  // runs of entries inside one ownership block
    const int64_t run_end = own.num_ranks == 1 ? j0 + n : std::min(j0 + n, (j / own.block + 1) * own.block);
    if (own.owns(j)) s.entries.append(view_rows(rows, j - j0, run_end - j0), copies);
    j = run_end;
  }
  copy_rows_batch(ctx, copies);
}

// Appends the chunk's projections `kv` and `score` [n, c*d] (wkv / wgate, computed once for the
// batch) to a compressor's token buffers: the rows are counted now and their copies added to
// `copies`, which the caller runs as one batch for every sequence before any pooling. Rows
// projected in place (a single sequence) need no copy.
void compressor_append(CompressorState& s, const TensorView& kv, const TensorView& score, int64_t pos_begin,
                       std::vector<kernels::RowCopy>& copies) {
  const int64_t n = kv.shape[0];
  CHECK_EQ(s.start + s.kv.rows(), pos_begin) << "compressor state out of step with the sequence";
  const TensorView kv_dst = s.kv.reserve(n);
  if (kv_dst.data != kv.data) copies.push_back({kv_dst, kv});
  s.kv.commit(n);
  const TensorView score_dst = s.score.reserve(n);
  if (score_dst.data != score.data) copies.push_back({score_dst, score});
  s.score.commit(n);
}

// The entries a compressor's completed blocks make: num_entries of them (0: no block complete),
// indices j0 .. j0 + num_entries.
struct PoolRange {
  int64_t j0 = 0;
  int64_t num_entries = 0;
};
PoolRange pool_range(const CompressorWeights& w, const CompressorState& s) {
  const int m = w.ratio;
  const int64_t lead = w.overlap ? m : 0;
  PoolRange r;
  r.num_entries = std::max<int64_t>(0, (s.kv.rows() - lead) / m);
  r.j0 = (s.start + lead) / m;
  CHECK(r.num_entries == 0 || r.j0 == s.num_entries) << "compressor entries out of step";
  return r;
}

kernels::CompressorPoolParams pool_params(const BlockContext& ctx, const CompressorWeights& w, const CompressorState& s,
                                          int64_t num_entries, const TensorView& out) {
  kernels::CompressorPoolParams pp;
  pp.kv = s.kv.view();
  pp.score = s.score.view();
  pp.ape = w.ape;
  pp.out = out;
  pp.ratio = w.ratio;
  pp.head_dim = w.head_dim;
  pp.overlap = w.overlap;
  pp.num_entries = num_entries;
  pp.out_bf16 = ctx.official;
  return pp;
}

// The numerics after pooling of new entries e [n, d] (spec §5.4), none of which mixes rows:
// RMSNorm, RoPE at each block's start position (`runs`: the entries of each sequence, j0 * m,
// (j0 + 1) * m, ...), then the official rounding (indexer: Hadamard + FP4; main: FP8 of the nope
// dims). One call each for the entries of any number of sequences.
void pooled_numerics(const BlockContext& ctx, const CompressorWeights& w, const TensorView& e,
                     const std::vector<float>& inv_freq, bool is_indexer, const std::vector<kernels::RopeRun>& runs) {
  norm(ctx, e, w.norm);
  kernels::RopeParams rp;
  rp.x = e;
  rp.inv_freq = inv_freq.data();
  rp.rope_dim = ctx.config.qk_rope_head_dim;
  rp.runs = runs.data();
  rp.num_runs = int64_t(runs.size());
  rp.out_bf16 = ctx.official;
  ctx.backend.rope(rp);
  if (!ctx.official) return;
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

// After a compressor's new entries are stored: count them and hand the consumed token rows to
// `drops` (the caller drops every sequence's in one batch, then calls compressor_release).
void pool_consumed(CompressorState& s, int ratio, int64_t num_entries, std::vector<RowDrop>& drops) {
  s.num_entries += num_entries;
  drops.push_back({&s.kv, num_entries * ratio});
  drops.push_back({&s.score, num_entries * ratio});
  s.start += num_entries * ratio;
}

// Pools every completed block of one compressor's token buffers into new entries (spec §5.4),
// post-processes them and appends the ones this rank owns; at least one block must be complete.
// A sequence under SP, or the only one of its batch to pool (straight into its table).
// PARALLEL: under SP every rank runs the compressor (its state is small and the same everywhere);
// only the owner of an entry stores it (EntryOwnership).
void compressor_pool_blocks(const BlockContext& ctx, const CompressorWeights& w, CompressorState& s,
                            const std::vector<float>& inv_freq, bool is_indexer, const EntryOwnership& own,
                            std::vector<RowDrop>& drops) {
  const auto [j0, num_entries] = pool_range(w, s);
  CHECK_GT(num_entries, 0) << "no complete compressor block";
  CHECK(!s.layout.compact() || ctx.official) << "compact KV rows hold official-numerics values only";
  Scratch staged = make_scratch(ctx.backend, {num_entries, w.head_dim});  // all new entries in F32
  const TensorView e = staged.view;
  ctx.backend.compressor_pool(pool_params(ctx, w, s, num_entries, e));
  pooled_numerics(ctx, w, e, inv_freq, is_indexer, {{0, num_entries, j0 * w.ratio, w.ratio}});
  keep_new_entries(ctx, s, e, j0, own);
  pool_consumed(s, w.ratio, num_entries, drops);
}

// The same for several sequences without SP (each keeps all its entries), each with a completed
// block: one compressor_pool_batch into one staging table of every new entry, one call of each
// post-pool op over all of them, one kv_pack (compact rows), and one batch of copies into the
// states' tables, so a decode step's launches do not grow with the batch.
void compressor_pool_blocks_batch(const BlockContext& ctx, const CompressorWeights& w,
                                  const std::vector<CompressorState*>& states, const std::vector<float>& inv_freq,
                                  bool is_indexer, std::vector<RowDrop>& drops) {
  if (states.empty()) return;
  if (states.size() == 1) {
    compressor_pool_blocks(ctx, w, *states[0], inv_freq, is_indexer, EntryOwnership{}, drops);
    return;
  }
  const KvRowLayout layout = states[0]->layout;
  CHECK(!layout.compact() || ctx.official) << "compact KV rows hold official-numerics values only";
  std::vector<PoolRange> ranges;
  std::vector<kernels::RopeRun> runs;
  int64_t total = 0;
  for (const CompressorState* s : states) {
    CHECK(s->layout.format == layout.format && s->layout.row_bytes == layout.row_bytes)
        << "the states of one compressor share a row layout";
    ranges.push_back(pool_range(w, *s));
    CHECK_GT(ranges.back().num_entries, 0) << "no complete compressor block";
    runs.push_back({total, ranges.back().num_entries, ranges.back().j0 * w.ratio, w.ratio});
    total += ranges.back().num_entries;
  }
  Scratch staged = make_scratch(ctx.backend, {total, w.head_dim});  // every new entry, in F32
  std::vector<kernels::CompressorPoolParams> parts;
  for (size_t i = 0; i < states.size(); ++i) {
    const kernels::RopeRun& run = runs[i];
    parts.push_back(pool_params(ctx, w, *states[i], run.num_rows,
                                view_rows(staged.view, run.row_begin, run.row_begin + run.num_rows)));
  }
  ctx.backend.compressor_pool_batch({parts.data(), int64_t(parts.size())});
  pooled_numerics(ctx, w, staged.view, inv_freq, is_indexer, runs);
  TensorView rows = staged.view;
  Scratch packed;  // compact rows: packed once for all (lossless, as keep_new_entries)
  if (layout.compact()) {
    packed = make_scratch(ctx.backend, {total, layout.row_bytes}, DType::kU8);
    kernels::KvPackParams kp;
    kp.x = staged.view;
    kp.out = packed.view;
    kp.layout = layout;
    ctx.backend.kv_pack(kp);
    rows = packed.view;
  }
  std::vector<kernels::RowCopy> copies;
  for (size_t i = 0; i < states.size(); ++i) {
    const kernels::RopeRun& run = runs[i];
    states[i]->entries.append(view_rows(rows, run.row_begin, run.row_begin + run.num_rows), copies);
  }
  copy_rows_batch(ctx, copies);
  for (size_t i = 0; i < states.size(); ++i) pool_consumed(*states[i], w.ratio, ranges[i].num_entries, drops);
}

// After the pooled rows are dropped: a long chunk grew the token buffers to its length; they now
// hold less than two blocks.
void compressor_release(CompressorState& s, int ratio) {
  s.kv.shrink(compressor_capacity(ratio));
  s.score.shrink(compressor_capacity(ratio));
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

bool compressors_update(const BlockContext& ctx, const LayerWeights& w, std::span<const AttentionSegment> segs,
                        const TensorView& a) {
  const AttentionWeights& aw = w.attn;
  const bool single = segs.size() == 1;
  CompressorRows idx_rows, main_rows;
  if (!single && aw.has_indexer) idx_rows = compressor_project(ctx, aw.indexer.compressor, a);
  if (!single && aw.has_compressor) main_rows = compressor_project(ctx, aw.compressor, a);
  std::vector<kernels::RowCopy> copies;
  auto append = [&](const CompressorWeights& cw, CompressorState& st, const CompressorRows& rows,
                    const AttentionSegment& s) {
    TensorView kv, score;
    if (single) {
      kv = st.kv.reserve(s.rows);
      project(ctx, a, cw.wkv, kv, false);
      score = st.score.reserve(s.rows);
      project(ctx, a, cw.wgate, score, false);
    } else {
      kv = view_rows(rows.kv.view, s.row_begin, s.row_begin + s.rows);
      score = view_rows(rows.score.view, s.row_begin, s.row_begin + s.rows);
    }
    compressor_append(st, kv, score, s.pos_begin, copies);
  };
  for (const AttentionSegment& s : segs) {
    if (aw.has_indexer) append(aw.indexer.compressor, s.state->indexer, idx_rows, s);
    if (aw.has_compressor) append(aw.compressor, s.state->main, main_rows, s);
  }
  copy_rows_batch(ctx, copies);
  std::vector<RowDrop> drops;
  std::vector<std::pair<CompressorState*, int>> pooled;  // (state, ratio) of the compressors that pooled
  std::vector<CompressorState*> idx_batch, main_batch;    // without SP: pooled together
  auto pool = [&](const CompressorWeights& cw, CompressorState& st, bool is_indexer, const AttentionSegment& s,
                  std::vector<CompressorState*>& batch) {
    if (pool_range(cw, st).num_entries == 0) return;
    pooled.push_back({&st, cw.ratio});
    if (s.own->num_ranks == 1) {
      batch.push_back(&st);
    } else {
      compressor_pool_blocks(ctx, cw, st, w.inv_freq, is_indexer, *s.own, drops);
    }
  };
  for (const AttentionSegment& s : segs) {
    if (aw.has_indexer) pool(aw.indexer.compressor, s.state->indexer, true, s, idx_batch);
    if (aw.has_compressor) pool(aw.compressor, s.state->main, false, s, main_batch);
  }
  if (aw.has_indexer) compressor_pool_blocks_batch(ctx, aw.indexer.compressor, idx_batch, w.inv_freq, true, drops);
  if (aw.has_compressor) compressor_pool_blocks_batch(ctx, aw.compressor, main_batch, w.inv_freq, false, drops);
  bool any_index = false;
  for (const AttentionSegment& s : segs) {
    const LayerState& state = *s.state;
    if (aw.has_indexer && state.indexer.num_entries > 0 && state.indexer.entries.rows() > 0) any_index = true;
  }
  RowTable::drop_front_batch(drops);
  // New blocks' addresses reach the device tables before attention reads them: nothing to upload
  // when the step reserved its rows (SequenceState::reserve), one upload otherwise.
  std::vector<KvRows*> tables;
  for (const auto& [st, ratio] : pooled) {
    compressor_release(*st, ratio);
    tables.push_back(&st->entries);
  }
  KvRows::sync_block_tables(ctx.backend, tables);
  return any_index;
}

}  // namespace v4rt::model::attn
