// SPDX-License-Identifier: MIT
// Paged compact KV rows (KvBlocks, common/kv_format.h) on the CPU: the attention and indexer ops,
// single and batched, read rows held in shuffled, non-adjacent blocks (a poisoned gap between and
// around them) bit for bit as they read the same rows held contiguously, for blocks of 1, 2 and 4
// rows, a last block left part empty, and both numerics settings; a plain table with a block table
// is refused.
#include <numeric>
#include <random>

#include "common/kv_format.h"
#include "kernels/backend.h"
#include "tests/kernels/cpu_test_util.h"

namespace v4rt::kernels {
namespace {

// `rows` packed rows copied into blocks of 2^block_shift rows, block b in slot 2 * perm[b] + 1 of a
// pool whose other slots (and the unused tail of the last block) hold 0xA5 bytes, so a row read
// from the wrong place decodes to other values.
struct PagedRows {
  std::vector<uint8_t> pool;
  std::vector<const uint8_t*> table;  // [num_blocks] block addresses
  KvBlocks blocks;
  TensorView view;  // U8 [rows, row_bytes], data = the first block
};

PagedRows page(const std::vector<uint8_t>& packed, const KvRowLayout& l, int block_shift, uint64_t seed) {
  const int64_t rows = int64_t(packed.size()) / l.row_bytes, block_rows = int64_t(1) << block_shift;
  const int64_t num_blocks = (rows + block_rows - 1) / block_rows, block_bytes = block_rows * l.row_bytes;
  std::vector<int64_t> perm(static_cast<size_t>(num_blocks));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  PagedRows p;
  p.pool.assign(size_t((2 * num_blocks + 1) * block_bytes), 0xA5);
  for (int64_t b = 0; b < num_blocks; ++b) {
    uint8_t* block = p.pool.data() + (2 * perm[size_t(b)] + 1) * block_bytes;
    const int64_t n = std::min(block_rows, rows - b * block_rows);
    std::copy_n(packed.data() + b * block_bytes, size_t(n * l.row_bytes), block);
    p.table.push_back(block);
  }
  p.blocks.blocks = p.table.data();
  p.blocks.block_shift = block_shift;
  p.view = TensorView(const_cast<uint8_t*>(p.table[0]), DType::kU8, {rows, l.row_bytes});
  return p;
}

// The numerics settings the ops accept: official (bf16 P / output, bf16 indexer arithmetic) or fp32.
constexpr bool kOfficial[] = {true, false};
constexpr int kBlockShifts[] = {0, 1, 2};

// Sparse attention inputs of one sequence: window rows, entries (contiguous and packed), list.
struct AttnInputs {
  static constexpr int64_t n = 3, heads = 4, dim = 128, num_win = 6, num_comp = 41, cand = 9;
  KvRowLayout l = fp8_rope_kv_layout(dim, 32);
  std::vector<float> q, win, lse;
  std::vector<uint8_t> packed;
  std::vector<int32_t> idx;
  AttnInputs(Backend& be, uint64_t seed) {
    q = randn(size_t(n * heads * dim), seed);
    win = randn(size_t(num_win * dim), seed + 1);
    std::vector<float> comp = official_rows(be, l, num_comp, seed + 2);
    packed = pack(be, l, comp);
    idx.resize(size_t(n * cand));
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i % 4 == 3 ? -1 : int32_t((i * 7 + seed) % num_comp);
  }
  SparseAttentionParams params(const WeightView& sink, bool list, bool official, std::vector<float>& out,
                               std::vector<float>& lse_out) {
    SparseAttentionParams p;
    p.q = tv(q, {n, heads, dim});
    p.window_kv = tv(win, {num_win, dim});
    p.window_pos0 = 154;
    p.pos_begin = 157;
    p.window = 4;
    p.comp_kv = TensorView(packed.data(), DType::kU8, {num_comp, l.row_bytes});
    p.comp_layout = l;
    if (list) p.comp_idx = tvi(idx, {n, cand});
    else p.comp_ratio = 4;  // positions 157.. see all 41 entries
    p.sink = sink;
    p.softmax_scale = 0.088f;
    p.bf16_probs = p.out_bf16 = official;
    p.out = tv(out, {n, heads, dim});
    p.lse = tv(lse_out, {n, heads});
    return p;
  }
};

TEST(CpuKvBlocks, AttentionReadsPagedEntriesAsContiguous) {
  auto be = make_cpu_backend();
  AttnInputs in(*be, 1);
  const WeightView sink = upload_f32(*be, randn(size_t(AttnInputs::heads), 4), 1, AttnInputs::heads);
  const size_t out_size = size_t(AttnInputs::n * AttnInputs::heads * AttnInputs::dim);
  const size_t lse_size = size_t(AttnInputs::n * AttnInputs::heads);
  for (int shift : kBlockShifts) {
    const PagedRows paged = page(in.packed, in.l, shift, 10 + uint64_t(shift));
    for (bool official : kOfficial) {
      for (bool list : {true, false}) {
        SCOPED_TRACE("block rows " + std::to_string(1 << shift) + (official ? ", official" : ", fp32") +
                     (list ? ", candidate list" : ", all visible entries"));
        std::vector<float> out(out_size), lse(lse_size), out_paged(out_size, -1.0f), lse_paged(lse_size, -1.0f);
        be->sparse_attention(in.params(sink, list, official, out, lse));
        SparseAttentionParams p = in.params(sink, list, official, out_paged, lse_paged);
        p.comp_kv = paged.view;
        p.comp_blocks = paged.blocks;
        be->sparse_attention(p);
        EXPECT_TRUE(bit_equal(out_paged, out));
        EXPECT_TRUE(bit_equal(lse_paged, lse));
      }
    }
  }
}

// The batched op over three sequences, each with its own block size, against the contiguous batch.
TEST(CpuKvBlocks, AttentionBatchReadsPagedEntriesAsContiguous) {
  auto be = make_cpu_backend();
  const WeightView sink = upload_f32(*be, randn(size_t(AttnInputs::heads), 4), 1, AttnInputs::heads);
  const size_t out_size = size_t(AttnInputs::n * AttnInputs::heads * AttnInputs::dim);
  const size_t lse_size = size_t(AttnInputs::n * AttnInputs::heads);
  std::vector<AttnInputs> seqs;
  std::vector<PagedRows> paged;
  for (int s = 0; s < 3; ++s) {
    seqs.emplace_back(*be, 20 + uint64_t(s) * 7);
    paged.push_back(page(seqs.back().packed, seqs.back().l, kBlockShifts[s], 30 + uint64_t(s)));
  }
  for (bool official : kOfficial) {
    SCOPED_TRACE(official ? "official" : "fp32");
    std::vector<std::vector<float>> out(6, std::vector<float>(out_size, -1.0f)), lse(6, std::vector<float>(lse_size));
    std::vector<SparseAttentionParams> contiguous, blocks;
    for (size_t s = 0; s < 3; ++s) {
      const bool list = s != 1;
      contiguous.push_back(seqs[s].params(sink, list, official, out[s], lse[s]));
      blocks.push_back(seqs[s].params(sink, list, official, out[3 + s], lse[3 + s]));
      blocks.back().comp_kv = paged[s].view;
      blocks.back().comp_blocks = paged[s].blocks;
    }
    be->sparse_attention_batch(SparseAttentionBatchParams{contiguous.data(), 3});
    be->sparse_attention_batch(SparseAttentionBatchParams{blocks.data(), 3});
    for (size_t s = 0; s < 3; ++s) {
      EXPECT_TRUE(bit_equal(out[3 + s], out[s])) << "sequence " << s;
      EXPECT_TRUE(bit_equal(lse[3 + s], lse[s])) << "sequence " << s;
    }
  }
}

// Indexer inputs of one sequence: queries, weights, keys (contiguous and packed).
struct IdxInputs {
  static constexpr int64_t n = 4, heads = 3, dim = 64, keys = 23;
  KvRowLayout l = fp4_kv_layout(dim);
  std::vector<float> q, w;
  std::vector<uint8_t> packed;
  IdxInputs(Backend& be, uint64_t seed) {
    q = randn(size_t(n * heads * dim), seed);
    w = randn(size_t(n * heads), seed + 1);
    std::vector<float> k = official_rows(be, l, keys, seed + 2);
    packed = pack(be, l, k);
  }
  // Keys [key_begin, keys): scores of a shard's range, the last keys becoming visible in the chunk.
  IndexerScoresParams params(bool official, int64_t key_begin, std::vector<float>& scores) {
    IndexerScoresParams p;
    p.q = tv(q, {n, heads, dim});
    p.keys = TensorView(packed.data(), DType::kU8, {keys, l.row_bytes});
    p.key_layout = l;
    p.w = tv(w, {n, heads});
    p.key_begin = key_begin;
    p.scores = tv(scores, {n, keys - key_begin});
    p.weight_scale = 0.3f;
    p.pos_begin = 4 * keys - 3;
    p.bf16_arith = official;
    return p;
  }
};

TEST(CpuKvBlocks, IndexerReadsPagedKeysAsContiguous) {
  auto be = make_cpu_backend();
  IdxInputs in(*be, 5);
  for (int shift : kBlockShifts) {
    const PagedRows paged = page(in.packed, in.l, shift, 40 + uint64_t(shift));
    for (bool official : kOfficial) {
      for (int64_t key_begin : {int64_t(0), int64_t(5)}) {
        SCOPED_TRACE("block rows " + std::to_string(1 << shift) + (official ? ", official" : ", fp32") +
                     ", keys from " + std::to_string(key_begin));
        const size_t size = size_t(IdxInputs::n * (IdxInputs::keys - key_begin));
        std::vector<float> scores(size), scores_paged(size, -1.0f);
        be->indexer_scores(in.params(official, key_begin, scores));
        IndexerScoresParams p = in.params(official, key_begin, scores_paged);
        p.keys = paged.view;
        p.key_blocks = paged.blocks;
        be->indexer_scores(p);
        EXPECT_TRUE(bit_equal(scores_paged, scores));
      }
    }
  }
}

TEST(CpuKvBlocks, IndexerBatchReadsPagedKeysAsContiguous) {
  auto be = make_cpu_backend();
  std::vector<IdxInputs> seqs;
  std::vector<PagedRows> paged;
  for (int s = 0; s < 3; ++s) {
    seqs.emplace_back(*be, 50 + uint64_t(s) * 7);
    paged.push_back(page(seqs.back().packed, seqs.back().l, kBlockShifts[s], 60 + uint64_t(s)));
  }
  const size_t size = size_t(IdxInputs::n * IdxInputs::keys);
  for (bool official : kOfficial) {
    SCOPED_TRACE(official ? "official" : "fp32");
    std::vector<std::vector<float>> scores(6, std::vector<float>(size, -1.0f));
    std::vector<IndexerScoresParams> contiguous, blocks;
    for (size_t s = 0; s < 3; ++s) {
      contiguous.push_back(seqs[s].params(official, 0, scores[s]));
      blocks.push_back(seqs[s].params(official, 0, scores[3 + s]));
      blocks.back().keys = paged[s].view;
      blocks.back().key_blocks = paged[s].blocks;
    }
    be->indexer_scores_batch(IndexerScoresBatchParams{contiguous.data(), 3});
    be->indexer_scores_batch(IndexerScoresBatchParams{blocks.data(), 3});
    for (size_t s = 0; s < 3; ++s) EXPECT_TRUE(bit_equal(scores[3 + s], scores[s])) << "sequence " << s;
  }
}

// Plain (F32) rows cannot be paged: the ops stop with a message naming the table.
TEST(CpuKvBlocksDeathTest, PlainRowsWithBlocksAreRefused) {
  auto be = make_cpu_backend();
  const int64_t rows = 8, dim = 64;
  std::vector<float> plain = randn(size_t(rows * dim), 7);
  const std::vector<const uint8_t*> table(4, reinterpret_cast<const uint8_t*>(plain.data()));
  KvBlocks blocks;
  blocks.blocks = table.data();
  blocks.block_shift = 1;

  IdxInputs in(*be, 8);
  std::vector<float> scores(size_t(IdxInputs::n * rows));
  IndexerScoresParams ip = in.params(true, 0, scores);
  ip.scores = tv(scores, {IdxInputs::n, rows});
  ip.keys = tv(plain, {rows, dim});
  ip.key_layout = KvRowLayout{};
  ip.key_blocks = blocks;
  EXPECT_DEATH(be->indexer_scores(ip), "indexer keys: paged rows need a compact layout");

  std::vector<float> q = randn(size_t(2 * dim), 9), out(q.size());
  SparseAttentionParams ap;
  ap.q = tv(q, {1, 2, dim});
  ap.window_kv = tv(plain, {rows, dim});
  ap.comp_kv = tv(plain, {rows, dim});
  ap.comp_blocks = blocks;
  ap.comp_ratio = 4;
  ap.sink = upload_f32(*be, randn(2, 4), 1, 2);
  ap.out = tv(out, {1, 2, dim});
  EXPECT_DEATH(be->sparse_attention(ap), "attention comp_kv: paged rows need a compact layout");
}

}  // namespace
}  // namespace v4rt::kernels
