// SPDX-License-Identifier: MIT
// CPU reference ops of the attention and MoE paths against values computed independently here:
// compressor pooling (explicit softmax-weighted sums; its batch against per-part calls), Hadamard (popcount formula), indexer scores
// with visibility, top-k ties, sparse attention with sink (direct softmax formula), MoE router and
// experts; the batched indexer scores, top-k and sparse attention of a decode batch against the
// per-sequence calls, bit for bit.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "common/kv_format.h"
#include "kernels/backend.h"
#include "tests/kernels/cpu_test_util.h"

namespace v4rt::kernels {
namespace {

TEST(CpuCompressor, NonOverlapPoolingEqualsSoftmaxSum) {
  auto be = make_cpu_backend();
  const int m = 4, d = 3, entries = 2, rows = 9;  // a partial 3rd block is ignored
  std::vector<float> kv = randn(size_t(rows * d), 11), sc = randn(size_t(rows * d), 12), ape = randn(size_t(m * d), 13);
  std::vector<float> out(static_cast<size_t>(entries * d));
  CompressorPoolParams p;
  p.kv = tv(kv, {rows, d});
  p.score = tv(sc, {rows, d});
  p.ape = upload_f32(*be, ape, m, d);
  p.out = tv(out, {entries, d});
  p.ratio = m;
  p.head_dim = d;
  p.num_entries = entries;
  be->compressor_pool(p);
  std::vector<double> ref;
  for (int e = 0; e < entries; ++e)
    for (int c = 0; c < d; ++c) {
      double den = 0, num = 0;
      for (int s = 0; s < m; ++s) {
        const double w = std::exp(double(sc[size_t((e * m + s) * d + c)]) + ape[size_t(s * d + c)]);
        den += w;
        num += w * kv[size_t((e * m + s) * d + c)];
      }
      ref.push_back(num / den);
    }
  EXPECT_LT(max_abs_diff(out, ref), 1e-5);
}

TEST(CpuCompressor, OverlapPoolsPreviousBlockFirstHalf) {
  auto be = make_cpu_backend();
  const int m = 4, d = 2, entries = 2, rows = (entries + 1) * m;
  std::vector<float> kv = randn(size_t(rows * 2 * d), 21), sc = randn(size_t(rows * 2 * d), 22);
  std::vector<float> ape = randn(size_t(m * 2 * d), 23);
  for (int s = 0; s < m; ++s)  // block 0 absent (sequence start): score -inf
    for (int c = 0; c < 2 * d; ++c) sc[size_t(s * 2 * d + c)] = -INFINITY;
  std::vector<float> out(static_cast<size_t>(entries * d));
  CompressorPoolParams p;
  p.kv = tv(kv, {rows, 2 * d});
  p.score = tv(sc, {rows, 2 * d});
  p.ape = upload_f32(*be, ape, m, 2 * d);
  p.out = tv(out, {entries, d});
  p.ratio = m;
  p.head_dim = d;
  p.overlap = true;
  p.num_entries = entries;
  be->compressor_pool(p);
  std::vector<double> ref;
  for (int e = 0; e < entries; ++e)
    for (int c = 0; c < d; ++c) {
      double den = 0, num = 0;
      for (int s = 0; s < 2 * m; ++s) {
        const int row = e * m + s;
        const int col = s < m ? c : d + c;
        const double logit = double(sc[size_t(row * 2 * d + col)]) + ape[size_t((s % m) * 2 * d + col)];
        if (std::isinf(logit)) continue;
        den += std::exp(logit);
        num += std::exp(logit) * kv[size_t(row * 2 * d + col)];
      }
      ref.push_back(num / den);
    }
  EXPECT_LT(max_abs_diff(out, ref), 1e-5);
}

TEST(CpuCompressor, BatchEqualsPerPartCalls) {
  // A decode step's pooling: each part its own token rows (a ragged number of completed blocks,
  // none in one part) into its own rows of one staged buffer, against one compressor_pool per part
  // into a buffer of its own, bit for bit; CSA (overlap) and HCA shapes, with and without bf16.
  auto be = make_cpu_backend();
  const int d = 5;
  const std::vector<int64_t> entries = {1, 3, 0, 2, 1};
  for (const bool overlap : {false, true}) {
    for (const bool out_bf16 : {false, true}) {
      const int m = overlap ? 4 : 8, c = overlap ? 2 : 1;
      const WeightView ape = upload_f32(*be, randn(size_t(m * c * d), 30), m, c * d);
      std::vector<std::vector<float>> kv, sc;
      int64_t total = 0;
      for (size_t i = 0; i < entries.size(); ++i) {
        const int64_t rows = (entries[i] + (overlap ? 1 : 0)) * m + 2;  // 2 rows of an open block
        kv.push_back(randn(size_t(rows * c * d), 40 + i));
        sc.push_back(randn(size_t(rows * c * d), 50 + i));
        if (overlap && i == 0)  // a sequence start: its first block is absent
          for (int64_t k = 0; k < int64_t(m) * c * d; ++k) sc[i][size_t(k)] = -INFINITY;
        total += entries[i];
      }
      std::vector<float> staged(size_t(total * d), -1.0f), ref(size_t(total * d), -1.0f);
      std::vector<CompressorPoolParams> parts;
      int64_t row = 0;
      for (size_t i = 0; i < entries.size(); ++i) {
        const int64_t rows = int64_t(kv[i].size()) / (c * d);
        CompressorPoolParams p;
        p.kv = tv(kv[i], {rows, c * d});
        p.score = tv(sc[i], {rows, c * d});
        p.ape = ape;
        p.ratio = m;
        p.head_dim = d;
        p.overlap = overlap;
        p.num_entries = entries[i];
        p.out_bf16 = out_bf16;
        p.out = view_rows(tv(staged, {total, d}), row, row + entries[i]);
        parts.push_back(p);
        std::vector<float> own(size_t(entries[i] * d));
        p.out = tv(own, {entries[i], d});
        if (entries[i] > 0) be->compressor_pool(p);
        std::copy(own.begin(), own.end(), ref.begin() + row * d);
        row += entries[i];
      }
      be->compressor_pool_batch({parts.data(), int64_t(parts.size())});
      EXPECT_EQ(0, std::memcmp(staged.data(), ref.data(), staged.size() * sizeof(float)))
          << "overlap " << overlap << " bf16 " << out_bf16;
    }
  }
}

TEST(CpuHadamard, MatchesPopcountFormula) {
  auto be = make_cpu_backend();
  std::vector<float> x2 = {1, 0};
  HadamardParams h;
  h.x = tv(x2, {1, 2});
  be->hadamard(h);
  EXPECT_NEAR(x2[0], 1 / std::sqrt(2.0), 1e-7);
  EXPECT_NEAR(x2[1], 1 / std::sqrt(2.0), 1e-7);
  const int dim = 16;
  std::vector<float> x = randn(2 * dim, 31);
  const std::vector<float> orig = x;
  h.x = tv(x, {2, dim});
  be->hadamard(h);
  std::vector<double> ref;
  for (int r = 0; r < 2; ++r)
    for (int i = 0; i < dim; ++i) {
      double s = 0;
      for (int j = 0; j < dim; ++j) s += (std::popcount(unsigned(i & j)) % 2 ? -1.0 : 1.0) * orig[size_t(r * dim + j)];
      ref.push_back(s / std::sqrt(double(dim)));
    }
  EXPECT_LT(max_abs_diff(x, ref), 1e-5);
}

TEST(CpuIndexer, ScoresWithVisibility) {
  auto be = make_cpu_backend();
  const int n = 3, heads = 2, dim = 4, keys = 3;
  std::vector<float> q = randn(size_t(n * heads * dim), 41), k = randn(size_t(keys * dim), 42), w = randn(size_t(n * heads), 43);
  std::vector<float> s(static_cast<size_t>(n * keys));
  IndexerScoresParams p;
  p.q = tv(q, {n, heads, dim});
  p.keys = tv(k, {keys, dim});
  p.w = tv(w, {n, heads});
  p.scores = tv(s, {n, keys});
  p.weight_scale = 0.25f;
  p.pos_begin = 6;  // positions 6, 7, 8: visible entries (pos+1)/4 = 1, 2, 2
  p.ratio = 4;
  be->indexer_scores(p);
  for (int t = 0; t < n; ++t)
    for (int j = 0; j < keys; ++j) {
      const int visible = (6 + t + 1) / 4;
      if (j >= visible) {
        EXPECT_EQ(s[size_t(t * keys + j)], -INFINITY);
        continue;
      }
      double v = 0;
      for (int h = 0; h < heads; ++h) {
        double dotv = 0;
        for (int i = 0; i < dim; ++i) dotv += double(q[size_t((t * heads + h) * dim + i)]) * k[size_t(j * dim + i)];
        v += std::max(dotv, 0.0) * w[size_t(t * heads + h)] * 0.25;
      }
      EXPECT_NEAR(s[size_t(t * keys + j)], v, 1e-5);
    }
}

TEST(CpuTopk, DescendingTiesToLowerIndexPadded) {
  auto be = make_cpu_backend();
  std::vector<float> s = {1, 3, 3, -INFINITY, 2, 3, /* row 2 */ -INFINITY, 5, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  std::vector<int32_t> idx(8);
  std::vector<float> val(8);
  TopkParams p;
  p.scores = tv(s, {2, 6});
  p.out_idx = tvi(idx, {2, 4});
  p.out_values = tv(val, {2, 4});
  p.k = 4;
  be->topk(p);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2, 5, 4, 1, -1, -1, -1}));
  EXPECT_EQ(val[3], 2.0f);
}

// Direct formula: softmax over candidates + sink, output Σ p_i v_i.
std::vector<double> attention_ref(const std::vector<float>& q, int heads, int dim, const std::vector<const float*>& cand,
                                  const std::vector<float>& sink, float scale) {
  std::vector<double> out(size_t(heads * dim), 0.0);
  for (int h = 0; h < heads; ++h) {
    std::vector<double> z;
    for (const float* c : cand) {
      double s = 0;
      for (int i = 0; i < dim; ++i) s += double(q[size_t(h * dim + i)]) * c[i];
      z.push_back(s * scale);
    }
    double den = std::exp(double(sink[size_t(h)]));
    for (double v : z) den += std::exp(v);
    for (size_t c = 0; c < cand.size(); ++c)
      for (int i = 0; i < dim; ++i) out[size_t(h * dim + i)] += std::exp(z[c]) / den * cand[c][i];
  }
  return out;
}

TEST(CpuSparseAttention, WindowPlusListWithSinkEqualsDirectSoftmax) {
  auto be = make_cpu_backend();
  const int heads = 2, dim = 8, window = 100, num_win = 150, num_comp = 90;
  std::vector<float> q = randn(size_t(2 * heads * dim), 51, 0.5f);
  std::vector<float> win = randn(size_t(num_win * dim), 52), comp = randn(size_t(num_comp * dim), 53);
  std::vector<float> sink = {0.3f, -1.0f};
  // Queries at positions 148 and 149; window rows hold positions 0..149; 70 list candidates with -1s.
  std::vector<int32_t> list(static_cast<size_t>(2 * 70));
  for (int t = 0; t < 2; ++t)
    for (int i = 0; i < 70; ++i) list[size_t(t * 70 + i)] = (i % 9 == 4) ? -1 : (i * 7 + t) % num_comp;
  std::vector<float> out(static_cast<size_t>(2 * heads * dim)), lse(4);
  SparseAttentionParams p;
  p.q = tv(q, {2, heads, dim});
  p.window_kv = tv(win, {num_win, dim});
  p.comp_kv = tv(comp, {num_comp, dim});
  p.comp_idx = tvi(list, {2, 70});
  p.sink = upload_f32(*be, sink, 1, heads);
  p.out = tv(out, {2, heads, dim});
  p.lse = tv(lse, {2, heads});
  p.pos_begin = 148;
  p.window_pos0 = 0;
  p.window = window;
  p.softmax_scale = 0.35f;
  be->sparse_attention(p);
  for (int t = 0; t < 2; ++t) {
    std::vector<const float*> cand;
    for (int s = 148 + t - window + 1; s <= 148 + t; ++s) cand.push_back(&win[size_t(s * dim)]);
    for (int i = 0; i < 70; ++i)
      if (list[size_t(t * 70 + i)] >= 0) cand.push_back(&comp[size_t(list[size_t(t * 70 + i)] * dim)]);
    std::vector<float> qt(q.begin() + t * heads * dim, q.begin() + (t + 1) * heads * dim);
    const std::vector<double> ref = attention_ref(qt, heads, dim, cand, sink, 0.35f);
    std::vector<float> got(out.begin() + t * heads * dim, out.begin() + (t + 1) * heads * dim);
    EXPECT_LT(max_abs_diff(got, ref), 1e-5) << "query " << t;
  }
}

TEST(CpuSparseAttention, AllVisibleCompressedEntries) {
  auto be = make_cpu_backend();
  const int heads = 1, dim = 4, ratio = 8;
  std::vector<float> q = randn(size_t(2 * dim), 61), win = randn(size_t(3 * dim), 62), comp = randn(size_t(5 * dim), 63);
  std::vector<float> sink = {0.0f}, out(size_t(2 * dim));
  SparseAttentionParams p;  // queries at 22, 23: window rows hold 21..23 (window 2), visible (pos+1)/8 = 2, 3
  p.q = tv(q, {2, heads, dim});
  p.window_kv = tv(win, {3, dim});
  p.window_pos0 = 21;
  p.window = 2;
  p.comp_kv = tv(comp, {5, dim});
  p.comp_ratio = ratio;
  p.sink = upload_f32(*be, sink, 1, 1);
  p.out = tv(out, {2, heads, dim});
  p.pos_begin = 22;
  p.softmax_scale = 1.0f;
  be->sparse_attention(p);
  for (int t = 0; t < 2; ++t) {
    std::vector<const float*> cand = {&win[size_t((t) * dim)], &win[size_t((t + 1) * dim)]};
    for (int j = 0; j < (22 + t + 1) / ratio; ++j) cand.push_back(&comp[size_t(j * dim)]);
    std::vector<float> qt(q.begin() + t * dim, q.begin() + (t + 1) * dim);
    const auto ref = attention_ref(qt, 1, dim, cand, sink, 1.0f);
    std::vector<float> got(out.begin() + t * dim, out.begin() + (t + 1) * dim);
    EXPECT_LT(max_abs_diff(got, ref), 1e-5);
  }
}

// --- batched select and attend (a decode batch, as model/attention.cpp issues it) ---------------

// Official-numerics rows of a compact layout, packed as the KV tables hold them: the values
// (rounded by the backend so the format holds them exactly) and the packed bytes.
struct CompactRows {
  std::vector<float> values;
  std::vector<uint8_t> bytes;
};
CompactRows compact_rows(Backend& be, const KvRowLayout& l, int64_t rows, uint64_t seed) {
  CompactRows c;
  c.values = randn(size_t(rows * l.dim), seed);
  round_to_kv_layout(be, l, tv(c.values, {rows, l.dim}));
  c.bytes.resize(size_t(rows * l.row_bytes));
  for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(kv_pack_row(l, &c.values[size_t(r * l.dim)], &c.bytes[size_t(r * l.row_bytes)]));
  return c;
}

// Three sequences (1, 2 and 1 query rows) with 7, 3 and 12 indexer keys (the last in compact FP4
// rows), top-k 4: the scores of all of them in one [4, 12] buffer filled with -inf, one
// indexer_scores_batch and one top-k at the batch's k give each sequence's own scores bit for bit
// and its own top-k selection, -1 past it. The second sequence has k = 3 and its first row only 2
// visible keys (fewer candidates than its k).
TEST(CpuBatchedSelect, OneScoreBufferAndOneTopkEqualPerSequenceCalls) {
  auto be = make_cpu_backend();
  const int heads = 2, dim = 32, topk = 4;
  struct Seq { int64_t rows, keys, pos; bool compact; };
  const Seq seqs[] = {{1, 7, 27, false}, {2, 3, 10, false}, {1, 12, 49, true}};
  const KvRowLayout fp4 = fp4_kv_layout(dim);
  std::vector<std::vector<float>> q, w, keys;
  std::vector<CompactRows> packed;
  int64_t total = 0, max_keys = 0;
  int kmax = 0;
  for (size_t i = 0; i < 3; ++i) {
    const Seq& sq = seqs[i];
    q.push_back(randn(size_t(sq.rows * heads * dim), 500 + i));
    w.push_back(randn(size_t(sq.rows * heads), 510 + i));
    packed.push_back(compact_rows(*be, fp4, sq.keys, 520 + i));
    keys.push_back(packed.back().values);
    total += sq.rows;
    max_keys = std::max(max_keys, sq.keys);
    kmax = std::max(kmax, int(std::min<int64_t>(topk, sq.keys)));
  }
  auto params = [&](size_t i, const TensorView& scores) {
    const Seq& sq = seqs[i];
    IndexerScoresParams p;
    p.q = tv(q[i], {sq.rows, heads, dim});
    if (sq.compact) {
      p.keys = TensorView(packed[i].bytes.data(), DType::kU8, {sq.keys, fp4.row_bytes});
      p.key_layout = fp4;
    } else {
      p.keys = tv(keys[i], {sq.keys, dim});
    }
    p.w = tv(w[i], {sq.rows, heads});
    p.scores = scores;
    p.weight_scale = 0.3f;
    p.pos_begin = sq.pos;
    p.bf16_arith = true;
    return p;
  };
  std::vector<float> all(size_t(total * max_keys));
  std::vector<int32_t> sel(size_t(total * kmax), 7);
  const TensorView all_view = tv(all, {total, max_keys});
  be->fill(all_view, -INFINITY);
  std::vector<IndexerScoresParams> parts;
  int64_t row = 0;
  for (size_t i = 0; i < 3; ++i) {
    parts.push_back(params(i, view_cols(view_rows(all_view, row, row + seqs[i].rows), 0, seqs[i].keys)));
    row += seqs[i].rows;
  }
  be->indexer_scores_batch({parts.data(), int64_t(parts.size())});
  TopkParams tp;
  tp.scores = all_view;
  tp.out_idx = tvi(sel, {total, kmax});
  tp.k = kmax;
  be->topk(tp);
  row = 0;
  for (size_t i = 0; i < 3; ++i) {
    const Seq& sq = seqs[i];
    const int k = int(std::min<int64_t>(topk, sq.keys));
    std::vector<float> own(size_t(sq.rows * sq.keys));
    std::vector<int32_t> own_sel(size_t(sq.rows * k));
    be->indexer_scores(params(i, tv(own, {sq.rows, sq.keys})));
    TopkParams op;
    op.scores = tv(own, {sq.rows, sq.keys});
    op.out_idx = tvi(own_sel, {sq.rows, k});
    op.k = k;
    be->topk(op);
    for (int64_t r = 0; r < sq.rows; ++r) {
      const float* got = &all[size_t((row + r) * max_keys)];
      EXPECT_EQ(0, std::memcmp(got, &own[size_t(r * sq.keys)], size_t(sq.keys) * 4)) << "sequence " << i << " row " << r;
      for (int64_t j = sq.keys; j < max_keys; ++j) EXPECT_EQ(got[j], -INFINITY);
      for (int c = 0; c < kmax; ++c)
        EXPECT_EQ(sel[size_t((row + r) * kmax + c)], c < k ? own_sel[size_t(r * k + c)] : -1)
            << "sequence " << i << " row " << r << " column " << c;
    }
    row += sq.rows;
  }
  EXPECT_EQ(sel[size_t(1 * kmax + 2)], -1) << "2 visible keys: the third pick is none";
}

// Four sequences in one sparse_attention_batch, each written into its rows of shared q / out / lse
// buffers, against each sequence's own call, bit for bit: window rows only (no compressed entries,
// a window not yet full); a candidate list of its own k = 3 padded with -1 to the batch's k = 70
// (60 window candidates + 70: the padding fills a whole trailing block of 64) against the unpadded
// list; compact kFp8Rope entries with a list; every visible entry (comp_ratio) with the window
// rows starting past position 0.
TEST(CpuBatchedAttention, BatchEqualsPerSequenceCallsAndPaddingChangesNothing) {
  auto be = make_cpu_backend();
  const int heads = 2, dim = 128, kmax = 70;
  const KvRowLayout fp8 = fp8_rope_kv_layout(dim, 32);
  struct Seq { int64_t pos, win_rows, win_pos0; int window, own_k; bool list, compact; int ratio; };
  const Seq seqs[] = {{5, 6, 0, 16, 0, false, false, 0},
                      {100, 60, 41, 60, 3, true, false, 0},
                      {300, 128, 173, 128, 40, true, true, 0},
                      {517, 128, 390, 128, 0, false, false, 16}};
  const int64_t num_comp = 40;
  std::vector<float> q = randn(size_t(4 * heads * dim), 600, 0.3f);
  std::vector<std::vector<float>> win;
  for (size_t i = 0; i < 4; ++i) win.push_back(randn(size_t(seqs[i].win_rows * dim), 610 + i));
  const std::vector<float> comp = randn(size_t(num_comp * dim), 620);
  const CompactRows comp8 = compact_rows(*be, fp8, num_comp, 621);
  std::vector<float> sink = {0.4f, -0.7f};
  const WeightView sink_w = upload_f32(*be, sink, 1, heads);
  std::vector<std::vector<int32_t>> own_list(4), padded(4);
  for (size_t i = 0; i < 4; ++i) {
    for (int c = 0; c < seqs[i].own_k; ++c) own_list[i].push_back(c % 7 == 3 ? -1 : int32_t((c * 13 + int(i)) % num_comp));
    padded[i] = own_list[i];
    padded[i].resize(size_t(kmax), -1);
  }
  auto params = [&](size_t i, bool pad, const TensorView& out, const TensorView& lse) {
    const Seq& sq = seqs[i];
    SparseAttentionParams p;
    p.q = view_rows(tv(q, {4, heads, dim}), int64_t(i), int64_t(i) + 1);
    p.window_kv = tv(win[i], {sq.win_rows, dim});
    p.window_pos0 = sq.win_pos0;
    p.window = sq.window;
    if (sq.compact) {
      p.comp_kv = TensorView(const_cast<uint8_t*>(comp8.bytes.data()), DType::kU8, {num_comp, fp8.row_bytes});
      p.comp_layout = fp8;
    } else if (sq.list || sq.ratio > 0) {
      p.comp_kv = TensorView(const_cast<float*>(comp.data()), DType::kF32, {num_comp, dim});
    }
    std::vector<int32_t>& list = pad ? padded[i] : own_list[i];
    if (sq.list) p.comp_idx = tvi(list, {1, int64_t(list.size())});
    p.comp_ratio = sq.ratio;
    p.sink = sink_w;
    p.out = out;
    p.lse = lse;
    p.pos_begin = sq.pos;
    p.softmax_scale = 0.09f;
    p.bf16_probs = p.out_bf16 = true;
    return p;
  };
  std::vector<float> out(q.size()), lse(size_t(4 * heads));
  std::vector<SparseAttentionParams> parts;
  for (size_t i = 0; i < 4; ++i)
    parts.push_back(params(i, true, view_rows(tv(out, {4, heads, dim}), int64_t(i), int64_t(i) + 1),
                           view_rows(tv(lse, {4, heads}), int64_t(i), int64_t(i) + 1)));
  be->sparse_attention_batch({parts.data(), int64_t(parts.size())});
  for (size_t i = 0; i < 4; ++i) {
    std::vector<float> own(static_cast<size_t>(heads * dim)), own_lse(static_cast<size_t>(heads));
    be->sparse_attention(params(i, false, tv(own, {1, heads, dim}), tv(own_lse, {1, heads})));
    EXPECT_EQ(0, std::memcmp(&out[i * heads * dim], own.data(), own.size() * 4)) << "sequence " << i;
    EXPECT_EQ(0, std::memcmp(&lse[i * heads], own_lse.data(), own_lse.size() * 4)) << "sequence " << i;
  }
}

TEST(CpuMoe, GateHashAndScoreRouting) {
  auto be = make_cpu_backend();
  const int E = 5, D = 3, k = 2;
  std::vector<float> x = randn(size_t(2 * D), 71), gate = randn(size_t(E * D), 72);
  std::vector<float> bias = {0, 0, 10, 0, 10};  // biases force experts 2 and 4 for selection only
  std::vector<int32_t> idx(4);
  std::vector<float> wt(4);
  MoeGateParams p;
  p.x = tv(x, {2, D});
  p.gate = upload_f32(*be, gate, E, D);
  p.bias = upload_f32(*be, bias, 1, E);
  p.out_idx = tvi(idx, {2, k});
  p.out_weight = tv(wt, {2, k});
  p.topk = k;
  p.route_scale = 1.5f;
  be->moe_gate(p);
  auto score = [&](int t, int e) {
    double l = 0;
    for (int i = 0; i < D; ++i) l += double(gate[size_t(e * D + i)]) * x[size_t(t * D + i)];
    return std::sqrt(std::log1p(std::exp(l)));
  };
  for (int t = 0; t < 2; ++t) {
    EXPECT_EQ(idx[size_t(t * 2)], 2);
    EXPECT_EQ(idx[size_t(t * 2 + 1)], 4);
    const double s2 = score(t, 2), s4 = score(t, 4);
    EXPECT_NEAR(wt[size_t(t * 2)], s2 / (s2 + s4) * 1.5, 1e-6);
    EXPECT_NEAR(wt[size_t(t * 2 + 1)], s4 / (s2 + s4) * 1.5, 1e-6);
  }
  // Hash routing: ids from the table, sorted ascending.
  std::vector<int64_t> table = {3, 1, 0, 4};  // [vocab 2, k 2]
  WeightSource s;
  s.name = "tid2eid";
  s.dtype = DType::kI64;
  s.rows = 2;
  s.cols = 2;
  s.data = table.data();
  std::vector<int32_t> tok = {0, 1};
  p.bias = WeightView();
  p.tid2eid = be->upload_weight(s);
  p.token_ids = tvi(tok, {2});
  be->moe_gate(p);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 0, 4}));
  const double a = score(0, 1), b = score(0, 3);
  EXPECT_NEAR(wt[0], a / (a + b) * 1.5, 1e-6);
}

TEST(CpuMoe, ExpertsInRangeEqualDirectSum) {
  auto be = make_cpu_backend();
  const int E = 3, D = 4, F = 3, n = 2;
  std::vector<std::vector<float>> w1, w2, w3;
  std::vector<WeightView> v1, v2, v3;
  for (int e = 0; e < E; ++e) {
    w1.push_back(randn(size_t(F * D), uint64_t(100 + e)));
    w3.push_back(randn(size_t(F * D), uint64_t(200 + e)));
    w2.push_back(randn(size_t(D * F), uint64_t(300 + e)));
  }
  for (int e = 0; e < E; ++e) {
    v1.push_back(upload_f32(*be, w1[size_t(e)], F, D));
    v3.push_back(upload_f32(*be, w3[size_t(e)], F, D));
    v2.push_back(upload_f32(*be, w2[size_t(e)], D, F));
  }
  std::vector<float> x = randn(size_t(n * D), 81, 2.0f);
  std::vector<int32_t> idx = {0, 2, 1, 2};
  std::vector<float> wt = {0.7f, 0.3f, 1.2f, 0.1f};
  std::vector<float> out(size_t(n * D), 1.0f);  // accumulates onto 1
  MoeExpertsParams p;
  p.x = tv(x, {n, D});
  p.idx = tvi(idx, {n, 2});
  p.weight = tv(wt, {n, 2});
  p.w1 = v1.data();
  p.w2 = v2.data();
  p.w3 = v3.data();
  p.out = tv(out, {n, D});
  p.e_begin = 1;  // expert 0 belongs to another rank
  p.e_end = 3;
  p.swiglu_limit = 1.5f;
  be->moe_experts(p);
  for (int t = 0; t < n; ++t) {
    std::vector<double> ref(size_t(D), 1.0);
    for (int s = 0; s < 2; ++s) {
      const int e = idx[size_t(t * 2 + s)];
      if (e < 1) continue;
      std::vector<double> h(static_cast<size_t>(F));
      for (int f = 0; f < F; ++f) {
        double g = 0, u = 0;
        for (int i = 0; i < D; ++i) {
          g += double(w1[size_t(e)][size_t(f * D + i)]) * x[size_t(t * D + i)];
          u += double(w3[size_t(e)][size_t(f * D + i)]) * x[size_t(t * D + i)];
        }
        g = std::min(g, 1.5);
        u = std::clamp(u, -1.5, 1.5);
        h[size_t(f)] = g / (1 + std::exp(-g)) * u;
      }
      for (int i = 0; i < D; ++i) {
        double y = 0;
        for (int f = 0; f < F; ++f) y += double(w2[size_t(e)][size_t(i * F + f)]) * h[size_t(f)];
        ref[size_t(i)] += wt[size_t(t * 2 + s)] * y;
      }
    }
    std::vector<float> got(out.begin() + t * D, out.begin() + (t + 1) * D);
    EXPECT_LT(max_abs_diff(got, ref), 1e-5) << "token " << t;
  }
  // Without accumulate: out = the sum onto 0, whatever out held (NaN here), the bits of a zero fill
  // and +=.
  std::vector<float> zero(size_t(n * D), 0.0f), assigned(size_t(n * D), std::nanf(""));
  p.out = tv(zero, {n, D});
  be->moe_experts(p);
  p.out = tv(assigned, {n, D});
  p.accumulate = false;
  be->moe_experts(p);
  EXPECT_EQ(std::memcmp(zero.data(), assigned.data(), zero.size() * 4), 0);
}

}  // namespace
}  // namespace v4rt::kernels
