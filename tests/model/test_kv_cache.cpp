// SPDX-License-Identifier: MIT
// The compact KV cache of official-numerics sequences (docs/KV_CACHE.md) on the tiny model, CPU:
// logits of prefill + decode with compact rows equal those with F32 rows bit for bit; every compact
// row unpacks to the F32 row bit for bit; the byte formulas (state_bytes, entry_block_bytes) equal
// the real tables; entry blocks carry compact rows and resume exactly; full entry blocks share a CSA
// layer's pool blocks by reference with their source and every resumed sequence; a backend that
// cannot read the compact formats is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/check.h"
#include "kernels/forwarding_backend.h"
#include "model/prefix_state.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::model {
namespace {

using testing::step_logits;
using testing::test_prompt;
using testing::tiny_config;

constexpr int64_t kVocab = 512;

struct OfficialModel {
  testing::TempDir dir;
  std::unique_ptr<kernels::Backend> backend = kernels::make_cpu_backend();
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Model> model;
  OfficialModel() {
    SyntheticOptions so;
    so.seed = 11;
    write_synthetic_checkpoint(tiny_config(kVocab), dir.str(), so);
    ckpt = Checkpoint::open(dir.str());
    ModelOptions mo;
    mo.numerics = Numerics::kOfficial;
    model = Model::load(*ckpt, mo, *backend);
  }
};

OfficialModel& official() {
  static OfficialModel* m = new OfficialModel();
  return *m;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<uint8_t> table_bytes(kernels::Backend& be, const KvRows& t) { return t.read(be); }

// Runs `tokens` in chunks ending at `cuts`, then `decode` greedy steps; every logit row.
std::vector<float> run(Model& m, SequenceState& seq, const std::vector<int32_t>& tokens, std::vector<int64_t> cuts,
                       int decode) {
  std::vector<float> out, last;
  int64_t pos = seq.position();
  cuts.push_back(int64_t(tokens.size()));
  for (int64_t cut : cuts) {
    const std::vector<int32_t> chunk(tokens.begin() + pos, tokens.begin() + cut);
    last = step_logits(m, seq, chunk, /*all=*/true);
    out.insert(out.end(), last.begin(), last.end());
    last.assign(last.end() - kVocab, last.end());
    pos = cut;
  }
  for (int i = 0; i < decode; ++i) {
    last = step_logits(m, seq, {argmax(last)});
    out.insert(out.end(), last.begin(), last.end());
  }
  return out;
}

// Entry and key bytes of every layer (the real allocation's rows).
int64_t entry_bytes(const SequenceState& s) {
  int64_t b = 0;
  for (int l = 0; l < s.num_layers(); ++l) b += s.layer(l).main.entries.bytes() + s.layer(l).indexer.entries.bytes();
  return b;
}

// Bytes the entry tables hold allocated (compact: whole pool blocks and their block table).
int64_t entry_allocated(const SequenceState& s) {
  int64_t b = 0;
  for (int l = 0; l < s.num_layers(); ++l)
    b += s.layer(l).main.entries.allocated_bytes() + s.layer(l).indexer.entries.allocated_bytes();
  return b;
}

TEST(KvCache, OfficialSequencesStoreCompactRows) {
  Model& m = *official().model;
  auto seq = m.new_sequence();
  EXPECT_EQ(seq->storage(), KvStorage::kCompact);
  const LayerState& csa = seq->layer(1);  // tiny: ratios 0, 4, 128, 4, 128, 4
  ASSERT_TRUE(csa.has_indexer);
  EXPECT_TRUE(csa.main.entries.paged());
  EXPECT_EQ(csa.main.entries.view().dtype, DType::kU8);
  EXPECT_EQ(csa.main.entries.row_bytes(), 168);  // 96 e4m3 + 32 bf16 + 2 scales, padded to 8
  EXPECT_EQ(csa.indexer.entries.row_bytes(), 36);  // 32 packed e2m1 + 2 scales, padded to 4
  EXPECT_EQ(seq->clone()->storage(), KvStorage::kCompact);
}

// 300 tokens in three chunks (HCA entries at 128 and 256, CSA blocks cut mid-way), then decode.
TEST(KvCache, CompactLogitsAndRowsEqualF32BitForBit) {
  OfficialModel& om = official();
  Model& m = *om.model;
  kernels::Backend& be = *om.backend;
  const std::vector<int32_t> tokens = test_prompt(kVocab, 300, 5);
  auto compact = m.new_sequence();
  SequenceState f32(m.config(), be, KvStorage::kF32);
  const std::vector<float> want = run(m, f32, tokens, {61, 190}, 6);
  const std::vector<float> got = run(m, *compact, tokens, {61, 190}, 6);
  EXPECT_TRUE(bit_equal(got, want)) << "logits of the compact cache differ from the F32 cache";

  int64_t rows_checked = 0;
  for (int l = 0; l < f32.num_layers(); ++l) {
    for (auto [c, f] : {std::pair{&compact->layer(l).main, &f32.layer(l).main},
                        std::pair{&compact->layer(l).indexer, &f32.layer(l).indexer}}) {
      if (f->num_entries == 0) continue;
      ASSERT_EQ(c->entries.rows(), f->entries.rows()) << "layer " << l;
      const std::vector<uint8_t> packed = table_bytes(be, c->entries);
      const std::vector<uint8_t> plain = table_bytes(be, f->entries);
      std::vector<float> want_rows(plain.size() / 4), got_rows(want_rows.size());
      std::memcpy(want_rows.data(), plain.data(), plain.size());
      for (int64_t r = 0; r < c->entries.rows(); ++r)
        kv_unpack_row(c->layout, packed.data() + r * c->layout.row_bytes, got_rows.data() + r * c->layout.dim);
      EXPECT_TRUE(bit_equal(got_rows, want_rows)) << "layer " << l << " " << kv_format_name(c->layout.format);
      rows_checked += c->entries.rows();
    }
  }
  EXPECT_EQ(rows_checked, 3 * (306 / 4) * 2 + 2 * (306 / 128));  // CSA entries + keys, HCA entries

  // The 129-token chunk grew the token buffers; they gave the room back once pooled.
  for (int l = 0; l < compact->num_layers(); ++l) {
    const LayerState& s = compact->layer(l);
    const int ratio = m.config().compress_ratio(l);
    if (s.has_compressor) {
      EXPECT_LE(s.main.kv.allocated_bytes(), compressor_capacity(ratio) * s.main.kv.row_bytes()) << "layer " << l;
    }
    if (s.has_indexer) {
      EXPECT_LE(s.indexer.score.allocated_bytes(), compressor_capacity(4) * s.indexer.score.row_bytes()) << "layer " << l;
    }
  }

  // The formulas charge exactly what the tables hold: F32 rows, and compact rows in whole pool
  // blocks (with 8 bytes of block table each); the difference of the two storages.
  const int64_t n = compact->position();
  EXPECT_EQ(state_bytes(m.config(), n, KvStorage::kF32) - state_bytes(m.config(), n, KvStorage::kCompact),
            entry_bytes(f32) - entry_allocated(*compact));
  EXPECT_EQ(entry_bytes(*compact), 3 * (n / 4) * (168 + 36) + 2 * (n / 128) * 168);
  auto blocks = [](int64_t rows) { return (rows + 63) / 64; };
  EXPECT_EQ(entry_allocated(*compact), 3 * blocks(n / 4) * (kv_block_bytes(168) + kv_block_bytes(36) + 16) +
                                           2 * blocks(n / 128) * (kv_block_bytes(168) + 8));
}

// The model's pool holds exactly the blocks of its live sequences, and gets them back.
TEST(KvCache, PoolHoldsTheLiveSequencesBlocks) {
  OfficialModel& om = official();
  Model& m = *om.model;
  auto a = m.new_sequence(), b = m.new_sequence();
  run(m, *a, test_prompt(kVocab, 290, 3), {}, 0);
  run(m, *b, test_prompt(kVocab, 70, 4), {}, 2);
  ASSERT_NE(m.kv_pool(), nullptr);
  auto block_bytes = [](const SequenceState& s) {  // whole blocks of each table's rows
    int64_t bytes = 0;
    for (int l = 0; l < s.num_layers(); ++l)
      for (const CompressorState* c : {&s.layer(l).main, &s.layer(l).indexer})
        if (c->entries.paged()) bytes += (c->entries.rows() + 63) / 64 * kv_block_bytes(c->entries.row_bytes());
    return bytes;
  };
  EXPECT_GT(block_bytes(*a), block_bytes(*b));
  EXPECT_EQ(m.kv_pool()->used_bytes(), block_bytes(*a) + block_bytes(*b));
  const int64_t reserved = m.kv_pool()->reserved_bytes();
  EXPECT_GE(reserved, m.kv_pool()->used_bytes());
  a.reset();
  b->reset();
  EXPECT_EQ(m.kv_pool()->used_bytes(), 0) << "blocks of a reset and of a destroyed sequence go back";
  EXPECT_EQ(m.kv_pool()->reserved_bytes(), reserved) << "slabs stay for the next sequences";
}

// Entry blocks of a compact sequence carry compact rows; a resume from them continues exactly.
TEST(KvCache, EntryBlocksCarryCompactRowsAndResumeExactly) {
  OfficialModel& om = official();
  Model& m = *om.model;
  const std::vector<int32_t> tokens = test_prompt(kVocab, 270, 9);
  const int64_t p = 200, block_tokens = 128;
  auto original = m.new_sequence();
  run(m, *original, std::vector<int32_t>(tokens.begin(), tokens.begin() + p), {}, 0);
  const TailSnapshot tail = snapshot_tail(*original);
  auto full = original->clone();
  const std::vector<float> want = run(m, *full, tokens, {}, 3);
  std::vector<EntryBlock> blocks;
  for (int64_t k = 0; k * block_tokens < p; ++k) {
    blocks.push_back(extract_block(m, *original, k, block_tokens, std::min<int64_t>((k + 1) * block_tokens, p)));
    const EntryBlock& b = blocks.back();
    EXPECT_EQ(b.main[1].copy.dtype(), DType::kU8);
    EXPECT_EQ(b.bytes(), entry_block_bytes(m.config(), b.ownership, k * block_tokens, b.end, KvStorage::kCompact));
  }
  std::vector<const EntryBlock*> ptrs;
  for (const EntryBlock& b : blocks) ptrs.push_back(&b);
  auto resumed = resume_from_blocks(m, ptrs, tail);
  EXPECT_TRUE(bit_equal(run(m, *resumed, tokens, {}, 3), want));
}

// Entry blocks of 256 tokens over a 600-token prefix on tiny (layers 0, CSA, HCA, CSA, HCA, CSA):
// the two full blocks hold each CSA layer's entries and keys as 64-row pool blocks, so extracting
// them takes 3 x 2 x 2 = 12 references and no new block; a resume shares those 12 and takes 8 new
// blocks (per CSA table the 22 rows of the partial block, per HCA layer its 4 entries); the tree's
// blocks outlive their source; the last holder gives them back.
TEST(KvCache, FullEntryBlocksShareThePoolBlocks) {
  OfficialModel& om = official();
  Model& m = *om.model;
  kernels::Backend& be = *om.backend;
  const std::vector<int32_t> tokens = test_prompt(kVocab, 620, 31);
  const int64_t p = 600, block_tokens = 256;
  auto original = m.new_sequence();
  const KvPool& pool = *m.kv_pool();
  const int64_t before = pool.used_bytes();
  run(m, *original, std::vector<int32_t>(tokens.begin(), tokens.begin() + p), {}, 0);
  const TailSnapshot tail = snapshot_tail(*original);
  std::vector<float> want;
  {
    auto full = original->clone();
    want = run(m, *full, tokens, {}, 3);
  }
  const int64_t entry = kv_block_bytes(kv_row_bytes(entry_layout(m.config(), KvStorage::kCompact)));
  const int64_t key = kv_block_bytes(kv_row_bytes(index_key_layout(m.config(), KvStorage::kCompact)));
  const int64_t shared_bytes = 3 * 2 * (entry + key);

  const int64_t at_extract = pool.used_bytes();
  std::vector<EntryBlock> blocks;
  for (int64_t k = 0; k * block_tokens < p; ++k)
    blocks.push_back(extract_block(m, *original, k, block_tokens, std::min<int64_t>((k + 1) * block_tokens, p)));
  EXPECT_EQ(pool.used_bytes(), at_extract) << "a full block is taken by reference, the rest copied outside the pool";
  int shared = 0;
  for (const EntryBlock& b : blocks) {
    for (int l = 0; l < m.config().num_hidden_layers; ++l) {
      const bool csa = m.config().compress_ratio(l) == 4, full = b.end == (b.index + 1) * block_tokens;
      for (const EntryRows* t : {&b.main[size_t(l)], &b.indexer[size_t(l)]}) {
        EXPECT_EQ(bool(t->shared), csa && full) << "block " << b.index << " layer " << l;
        shared += bool(t->shared);
      }
    }
    EXPECT_EQ(b.bytes(), entry_block_bytes(m.config(), b.ownership, b.index * block_tokens, b.end, KvStorage::kCompact))
        << "a shared block is charged as its rows, as a copy would be";
  }
  EXPECT_EQ(shared, 12);
  EXPECT_EQ(blocks[1].main[1].shared.block(), original->layer(1).main.entries.block_at(1));

  const std::vector<uint8_t> keys = table_bytes(be, original->layer(3).indexer.entries);
  original.reset();
  EXPECT_EQ(pool.used_bytes(), before + shared_bytes) << "the source's own blocks went back, the tree's stayed";
  std::vector<uint8_t> held(size_t(2 * kKvBlockRows * blocks[0].indexer[3].shared.row_bytes()));
  for (int k = 0; k < 2; ++k)
    be.copy_to_host(held.data() + held.size() / 2 * size_t(k), blocks[size_t(k)].indexer[3].shared.block(), held.size() / 2);
  EXPECT_TRUE(std::equal(held.begin(), held.end(), keys.begin())) << "the tree's blocks keep the source's rows";

  std::vector<const EntryBlock*> ptrs;
  for (const EntryBlock& b : blocks) ptrs.push_back(&b);
  auto resumed = resume_from_blocks(m, ptrs, tail);
  EXPECT_EQ(pool.used_bytes(), before + shared_bytes + 3 * 2 * (entry + key) / 2 + 2 * entry)
      << "a resume takes new blocks only for the partial block's and the HCA layers' rows";
  EXPECT_EQ(resumed->layer(5).main.entries.block_at(0), blocks[0].main[5].shared.block());
  auto from_state = resume_from_state(m, *resumed, tail);
  EXPECT_EQ(from_state->layer(5).indexer.entries.block_at(1), blocks[1].indexer[5].shared.block());
  EXPECT_EQ(pool.used_bytes(), before + shared_bytes + 2 * (3 * (entry + key) + 2 * entry))
      << "a resume from a live sequence shares its full blocks as well";
  EXPECT_TRUE(bit_equal(run(m, *resumed, tokens, {}, 3), want));
  EXPECT_TRUE(bit_equal(run(m, *from_state, tokens, {}, 3), want));

  resumed.reset();
  from_state.reset();
  EXPECT_EQ(pool.used_bytes(), before + shared_bytes) << "the tree still holds its blocks";
  blocks.clear();
  EXPECT_EQ(pool.used_bytes(), before) << "the last holder gave every shared block back";
}

// A speculative chunk that completes the first entry of a second pool block, rolled back before it:
// the block goes back to the pool, and continuing gives exactly a fresh run's logits (the next
// block taken may be another one; the device table is uploaded again).
TEST(KvCache, RollbackAcrossAPoolBlockReturnsItAndStaysExact) {
  OfficialModel& om = official();
  Model& m = *om.model;
  const std::vector<int32_t> all = test_prompt(kVocab, 266, 21);
  const std::vector<int32_t> prompt(all.begin(), all.begin() + 255);  // 63 CSA entries: one block
  auto spec = m.new_sequence();
  step_logits(m, *spec, prompt);
  ASSERT_EQ(spec->layer(1).indexer.entries.rows(), 63);
  const int64_t used = m.kv_pool()->used_bytes();
  spec->mark(6);
  step_logits(m, *spec, {1, 2, 3, 4, 5, 6}, true);  // positions 255..260: entries 63 and 64
  ASSERT_EQ(spec->layer(1).indexer.entries.rows(), 65);
  EXPECT_GT(m.kv_pool()->used_bytes(), used) << "entry 64 starts a second block";
  spec->rollback(256);  // keeps the draft token 1 at 255 (entry 63 complete), retracts entry 64
  EXPECT_EQ(spec->layer(1).indexer.entries.rows(), 64);
  EXPECT_EQ(m.kv_pool()->used_bytes(), used) << "the second block went back";
  const std::vector<int32_t> rest(all.begin() + 256, all.end());  // 10 tokens: entries 64 and 65
  const std::vector<float> got = step_logits(m, *spec, rest, true);
  std::vector<int32_t> history = prompt;
  history.push_back(1);
  auto fresh = m.new_sequence();
  step_logits(m, *fresh, history);
  EXPECT_TRUE(bit_equal(got, step_logits(m, *fresh, rest, true)));
  EXPECT_EQ(spec->layer(1).indexer.entries.rows(), 66);
}

// store_entries (benchmarks' fabricated states): F32 tables take the rows as given; compact tables
// take them rounded in place, and unpack to exactly the rounded rows.
TEST(KvCache, StoreEntriesRoundsThenPacks) {
  auto be = kernels::make_cpu_backend();
  const ModelConfig c = tiny_config(kVocab);
  SequenceState compact(c, *be, KvStorage::kCompact), f32(c, *be, KvStorage::kF32);
  const int64_t rows = 9, dim = c.head_dim;
  std::vector<float> given(size_t(rows * dim));
  for (size_t i = 0; i < given.size(); ++i) given[i] = std::sin(0.37f * float(i)) * float(1 + i % 13);
  std::vector<float> x = given;
  store_entries(*be, f32.layer(1).main, TensorView(x.data(), DType::kF32, {rows, dim}));
  EXPECT_TRUE(bit_equal(x, given));
  const std::vector<uint8_t> plain = table_bytes(*be, f32.layer(1).main.entries);
  EXPECT_EQ(std::memcmp(plain.data(), given.data(), plain.size()), 0);

  CompressorState& cs = compact.layer(1).main;
  store_entries(*be, cs, TensorView(x.data(), DType::kF32, {rows, dim}));
  EXPECT_FALSE(bit_equal(x, given)) << "the rows were not rounded";
  for (int64_t r = 0; r < rows; ++r)  // the RoPE dims are rounded to bf16
    for (int64_t i = c.nope_dim(); i < dim; ++i)
      EXPECT_EQ(x[size_t(r * dim + i)], round_bf16(given[size_t(r * dim + i)])) << "row " << r << " dim " << i;
  const std::vector<uint8_t> packed = table_bytes(*be, cs.entries);
  ASSERT_EQ(cs.entries.rows(), rows);
  std::vector<float> back(x.size());
  for (int64_t r = 0; r < rows; ++r)
    kv_unpack_row(cs.layout, packed.data() + r * cs.layout.row_bytes, back.data() + r * dim);
  EXPECT_TRUE(bit_equal(back, x));
}

// A backend that reads only plain rows: a compact sequence on it is refused, naming the backend.
class PlainOnly final : public kernels::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::string name() const override { return "plain-only"; }
  bool supports_kv_format(KvFormat f) const override { return f == KvFormat::kPlain; }
};

TEST(KvCache, BackendWithoutTheFormatIsRefused) {
  PlainOnly be(kernels::make_cpu_backend());
  const ModelConfig c = tiny_config(kVocab);
  try {
    SequenceState s(c, be, KvStorage::kCompact);
    FAIL() << "compact sequence accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("plain-only cannot read the fp8_rope KV format"), std::string::npos)
        << e.what();
  }
  SequenceState plain(c, be, KvStorage::kF32);
  EXPECT_EQ(plain.storage(), KvStorage::kF32);
}

// A Flash SequenceState grown to 1M tokens (every table reserved at its state_bytes size: the
// window tail, the compressor buffers' room, the entries and keys; no data written, so the host
// pages stay untouched) allocates exactly what state_bytes charges, in both storages.
TEST(KvCache, FlashMillionTokenAllocationEqualsStateBytes) {
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
  // 18 GB of untouched host memory is free without ASan; with it, poisoning on free writes an
  // eighth of that in shadow pages. The ordinary build runs this test.
  GTEST_SKIP() << "allocates 18 GB of host address space; run in the build without ASan";
#endif
#endif
  const ModelConfig flash = preset_config("flash", false);
  auto cpu = kernels::make_cpu_backend();
  const int64_t n = int64_t(1) << 20;
  for (KvStorage storage : {KvStorage::kCompact, KvStorage::kF32}) {
    SequenceState s(flash, *cpu, storage);
    for (int l = 0; l < flash.num_hidden_layers; ++l) {
      LayerState& ls = s.layer(l);
      const int ratio = flash.compress_ratio(l);
      auto grow = [](RowTable& t, int64_t rows) {
        t.reserve(rows - t.rows());
        t.commit(rows - t.rows());
      };
      auto grow_entries = [](KvRows& t, int64_t rows) { t.reserve(rows); };  // room (blocks) only
      grow(ls.window_tail, window_table_rows(flash));
      for (auto [c, r] : {std::pair{&ls.main, ratio}, std::pair{&ls.indexer, 4}}) {
        if ((c == &ls.main && !ls.has_compressor) || (c == &ls.indexer && !ls.has_indexer)) continue;
        grow(c->kv, compressor_capacity(r));
        grow(c->score, compressor_capacity(r));
        grow_entries(c->entries, n / r);
      }
    }
    const int64_t allocated = s.allocated_bytes();
    std::printf("Flash SequenceState at 1M tokens, %s: %lld B allocated (%.2f GiB)\n",
                storage == KvStorage::kCompact ? "compact" : "F32", (long long)allocated, double(allocated) / (1 << 30));
    EXPECT_EQ(allocated, state_bytes(flash, n, storage));
  }
}

// Arithmetic of spec §8: a 1M-token Flash sequence fits in 4.0 GB with the compact rows.
TEST(KvCache, FlashMillionTokenSequenceBytes) {
  const ModelConfig flash = preset_config("flash", false);
  const int64_t n = int64_t(1) << 20;
  const int64_t compact = state_bytes(flash, n, KvStorage::kCompact), f32 = state_bytes(flash, n, KvStorage::kF32);
  std::printf("Flash 1M tokens: F32 %lld B (%.2f GiB), compact %lld B (%.2f GiB)\n", (long long)f32,
              double(f32) / (1 << 30), (long long)compact, double(compact) / (1 << 30));
  EXPECT_LE(compact, int64_t(4'000'000'000));
  // Entries: 21 CSA layers x 2^18 x (584 + 68) + 20 HCA layers x 2^13 x 584, in whole 64-row pool
  // blocks (none partial at 2^20) with 8 bytes of block table each; the F32 part is the window
  // tails and compressor buffers, the same in both storages.
  const int64_t rows = 21 * (n / 4) * (584 + 68) + 20 * (n / 128) * 584 + 8 * (21 * 2 * (n / 4 / 64) + 20 * (n / 128 / 64));
  const int64_t rows_f32 = 21 * (n / 4) * (512 + 128) * 4 + 20 * (n / 128) * 512 * 4;
  EXPECT_EQ(f32 - compact, rows_f32 - rows);
}

}  // namespace
}  // namespace v4rt::model
