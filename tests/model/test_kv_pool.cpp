// SPDX-License-Identifier: MIT
// The compact KV pool and its paged tables (model/kv_pool.h, model/kv_rows.h) on the CPU backend:
// blocks are reused, the byte limit is enforced with a clear error, rows cross blocks intact, the
// device block table matches the host one after one upload, and truncate / clone keep the rows; a
// block shared by several holders (tables, KvBlockRef) goes back only after the last one releases
// it, and a table never writes into a block it shares.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include "common/check.h"
#include "common/kv_format.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kv_pool.h"
#include "model/kv_rows.h"

namespace v4rt::model {
namespace {

constexpr int64_t kRowBytes = 68;  // a Flash indexer key (fp4, 128 dims)

KvRowLayout key_layout() { return fp4_kv_layout(128); }

// n rows whose bytes encode (first + r, byte index): every row differs from every other.
std::vector<uint8_t> rows_from(int64_t first, int64_t n) {
  std::vector<uint8_t> v(size_t(n * kRowBytes));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < kRowBytes; ++b) v[size_t(r * kRowBytes + b)] = uint8_t((first + r) * 7 + b * 13);
  return v;
}

void append(kernels::Backend& be, KvRows& t, std::vector<uint8_t>& host) {
  std::vector<kernels::RowCopy> copies;
  const int64_t n = int64_t(host.size()) / kRowBytes;
  t.append(TensorView(host.data(), DType::kU8, {n, kRowBytes}), copies);
  be.copy_rows_batch(copies.data(), copies.size());
}

TEST(KvPool, BlocksAreAlignedReusedAndCounted) {
  auto be = kernels::make_cpu_backend();
  KvPool pool(*be);
  KvBlockPool& blocks = pool.blocks_for(kRowBytes);
  EXPECT_EQ(blocks.block_bytes(), kv_block_bytes(kRowBytes));
  EXPECT_EQ(blocks.block_bytes(), 4352);  // 64 x 68, already a multiple of 256
  EXPECT_EQ(kv_block_bytes(584), 37376);  // a Flash entry: 64 x 584
  EXPECT_EQ(kv_block_bytes(36), 2304);
  EXPECT_EQ(kv_block_bytes(100), 6400);   // 64 x 100 = 6400 = 25 x 256
  EXPECT_EQ(kv_block_bytes(3), 256);      // 192 rounded up
  std::set<uint8_t*> seen;
  std::vector<uint8_t*> held;
  for (int i = 0; i < 40; ++i) {
    uint8_t* b = blocks.allocate();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 256, 0u);
    EXPECT_TRUE(seen.insert(b).second) << "block handed out twice";
    held.push_back(b);
  }
  EXPECT_EQ(blocks.blocks_in_use(), 40);
  EXPECT_EQ(pool.used_bytes(), 40 * blocks.block_bytes());
  EXPECT_GE(pool.reserved_bytes(), pool.used_bytes());
  const int64_t reserved = pool.reserved_bytes();
  blocks.release(held.back());
  EXPECT_EQ(blocks.allocate(), held.back()) << "a freed block serves the next request";
  EXPECT_EQ(pool.reserved_bytes(), reserved) << "no new slab while a block is free";
  EXPECT_EQ(&pool.blocks_for(kRowBytes), &blocks);
}

TEST(KvPool, LimitIsEnforcedNamingTheBytes) {
  auto be = kernels::make_cpu_backend();
  const int64_t block = kv_block_bytes(kRowBytes);
  KvPool pool(*be, 3 * block + 255 + 100);  // one slab of three blocks and its alignment slack
  KvBlockPool& blocks = pool.blocks_for(kRowBytes);
  for (int i = 0; i < 3; ++i) blocks.allocate();
  try {
    blocks.allocate();
    FAIL() << "a fourth block fit in three blocks' bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV pool full"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(std::to_string(3 * block + 255 + 100)), std::string::npos) << e.what();
  }
  EXPECT_LE(pool.reserved_bytes(), pool.max_bytes());
}

// The rows as the kernels address them: through the device block table.
std::vector<uint8_t> rows_via_table(const KvRows& t) {
  const KvBlocks b = t.blocks();
  std::vector<uint8_t> out(size_t(t.bytes()));
  for (int64_t r = 0; r < t.rows(); ++r)
    std::memcpy(out.data() + r * kRowBytes, b.blocks[r >> b.block_shift] + (r & (b.block_rows() - 1)) * kRowBytes,
                kRowBytes);
  return out;
}

TEST(KvPool, ASharedBlockGoesBackAfterItsLastHolder) {
  auto be = kernels::make_cpu_backend();
  auto pool = std::make_shared<KvPool>(*be);
  KvBlockPool& blocks = pool->blocks_for(kRowBytes);
  uint8_t* b = blocks.allocate();
  EXPECT_EQ(blocks.use_count(b), 1);
  blocks.retain(b);
  EXPECT_EQ(blocks.use_count(b), 2);
  blocks.release(b);
  EXPECT_EQ(blocks.blocks_in_use(), 1) << "one holder left";
  EXPECT_NE(blocks.allocate(), b) << "a held block is not handed out again";
  blocks.release(b);
  EXPECT_EQ(blocks.use_count(b), 0);
  EXPECT_EQ(blocks.blocks_in_use(), 1) << "only the second block is still held";
  EXPECT_EQ(blocks.allocate(), b) << "free after both holders released it";
  EXPECT_DEATH(blocks.retain(reinterpret_cast<uint8_t*>(&blocks)), "not handed out");

  uint8_t* c = blocks.allocate();
  KvBlockRef ref(pool, kRowBytes, c);  // a second holder
  blocks.release(c);                   // the first lets go
  {
    const KvBlockRef copy = ref;       // a third
    EXPECT_EQ(blocks.use_count(c), 2);
    KvBlockRef moved = std::move(ref);
    EXPECT_FALSE(ref);
    EXPECT_EQ(blocks.use_count(c), 2) << "a move hands the reference over";
  }
  EXPECT_EQ(blocks.use_count(c), 0) << "the copy and the moved-to reference released it";
  EXPECT_EQ(blocks.blocks_in_use(), 2);
}

TEST(KvRows, SharedBlocksAreReadByEveryHolderAndNeverWritten) {
  auto be = kernels::make_cpu_backend();
  auto pool = std::make_shared<KvPool>(*be);
  KvBlockPool& blocks = pool->blocks_for(kRowBytes);
  auto src = std::make_unique<KvRows>(pool, key_layout());
  std::vector<uint8_t> want = rows_from(0, 150);
  append(*be, *src, want);
  EXPECT_DEATH(src->block_at(2), "block 2 of 150 rows");
  KvBlockRef ref(pool, kRowBytes, src->block_at(1));  // rows [64, 128), held outside any table
  KvRows t(pool, key_layout());
  t.append_shared(src->block_at(0));
  t.append_shared(ref.block());
  std::vector<uint8_t> more = rows_from(500, 10);
  EXPECT_DEATH(t.reserve(140); t.append_shared(ref.block()), "after whole blocks");
  append(*be, t, more);  // into a block of its own
  EXPECT_DEATH(t.append_shared(ref.block()), "after whole blocks");
  EXPECT_EQ(blocks.blocks_in_use(), 3 + 1) << "t took one block of its own, shared two";
  src.reset();  // the source goes: its third block back, the shared ones stay
  EXPECT_EQ(blocks.blocks_in_use(), 3);
  std::vector<uint8_t> head(want.begin(), want.begin() + 128 * kRowBytes);
  head.insert(head.end(), more.begin(), more.end());
  KvRows* tp = &t;
  KvRows::sync_block_tables(*be, std::span<KvRows* const>(&tp, 1));
  EXPECT_EQ(rows_via_table(t), head) << "the shared blocks reach the device table";

  // A rollback into the block the reference shares: t copies the kept rows into a block of its own
  // before it appends, and the reference still reads the source's rows.
  t.truncate(100);
  std::vector<uint8_t> other = rows_from(900, 40);
  append(*be, t, other);
  std::vector<uint8_t> got(size_t(kKvBlockRows * kRowBytes));
  std::memcpy(got.data(), ref.block(), got.size());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin() + 64 * kRowBytes)) << "a shared block was written";
  std::vector<uint8_t> t_rows(want.begin(), want.begin() + 100 * kRowBytes);
  t_rows.insert(t_rows.end(), other.begin(), other.end());
  KvRows::sync_block_tables(*be, std::span<KvRows* const>(&tp, 1));
  EXPECT_EQ(rows_via_table(t), t_rows);
  EXPECT_EQ(blocks.use_count(ref.block()), 1) << "only the reference holds it now";
  ref.reset();
  t.clear();
  EXPECT_EQ(blocks.blocks_in_use(), 0);
}

TEST(KvRows, PagedRowsCrossBlocksAndTruncateCloneKeepThem) {
  auto be = kernels::make_cpu_backend();
  auto pool = std::make_shared<KvPool>(*be);
  KvRows t(pool, key_layout());
  ASSERT_TRUE(t.paged());
  std::vector<uint8_t> want;
  for (int64_t n : {1, 62, 3, 64, 130, 5}) {  // appends that start and end mid-block
    std::vector<uint8_t> more = rows_from(int64_t(want.size()) / kRowBytes, n);
    append(*be, t, more);
    want.insert(want.end(), more.begin(), more.end());
  }
  ASSERT_EQ(t.rows(), 265);
  EXPECT_EQ(t.read(*be), want);
  EXPECT_FALSE(t.synced()) << "appends take blocks on the host only";
  KvRows* tp = &t;
  KvRows::sync_block_tables(*be, std::span<KvRows* const>(&tp, 1));
  ASSERT_TRUE(t.synced());
  EXPECT_EQ(t.blocks().block_rows(), kKvBlockRows);
  EXPECT_EQ(rows_via_table(t), want);
  EXPECT_EQ(t.view().shape[0], 265);
  EXPECT_EQ(t.allocated_bytes(), 5 * (kv_block_bytes(kRowBytes) + 8));  // ceil(265 / 64) blocks

  KvRows c = t.clone(*be);
  EXPECT_FALSE(c.synced());
  KvRows* cp = &c;
  KvRows::sync_block_tables(*be, std::span<KvRows* const>(&cp, 1));
  EXPECT_EQ(rows_via_table(c), want);
  t.truncate(100);  // gives back blocks 2..4
  EXPECT_EQ(pool->blocks_for(kRowBytes).blocks_in_use(), 2 + 5);
  std::vector<uint8_t> head(want.begin(), want.begin() + 100 * kRowBytes);
  EXPECT_EQ(t.read(*be), head);
  EXPECT_EQ(rows_via_table(c), want) << "the clone shares no block with its source";
  std::vector<uint8_t> more = rows_from(1000, 70);
  append(*be, t, more);  // re-grows into (possibly other) blocks: the table upload covers them
  head.insert(head.end(), more.begin(), more.end());
  KvRows::sync_block_tables(*be, std::span<KvRows* const>(&tp, 1));
  EXPECT_EQ(rows_via_table(t), head);
  t.clear();
  c = KvRows();  // the moved-over clone's blocks go back
  EXPECT_EQ(pool->blocks_for(kRowBytes).blocks_in_use(), 0);
}

TEST(KvRows, OneUploadServesManyTablesAndAReserveTakesNoBlockLater) {
  auto be = kernels::make_cpu_backend();
  auto pool = std::make_shared<KvPool>(*be);
  std::vector<KvRows> tables;
  for (int i = 0; i < 5; ++i) tables.emplace_back(pool, key_layout());
  std::vector<KvRows*> ptrs;
  for (KvRows& t : tables) {
    t.reserve(200);  // four blocks each, taken now
    ptrs.push_back(&t);
  }
  ptrs.push_back(nullptr);  // skipped
  const int64_t in_use = pool->blocks_for(kRowBytes).blocks_in_use();
  EXPECT_EQ(in_use, 5 * 4);
  KvRows::sync_block_tables(*be, ptrs);
  std::vector<std::vector<uint8_t>> want;
  for (size_t i = 0; i < tables.size(); ++i) {
    want.push_back(rows_from(int64_t(i) * 500, 190));
    append(*be, tables[i], want.back());
  }
  EXPECT_EQ(pool->blocks_for(kRowBytes).blocks_in_use(), in_use) << "appends within the reserve take no block";
  for (size_t i = 0; i < tables.size(); ++i) {
    EXPECT_TRUE(tables[i].synced()) << "table " << i;
    EXPECT_EQ(rows_via_table(tables[i]), want[i]) << "table " << i;
  }
}

TEST(KvRows, AnUnsyncedTableIsNeverHandedToAKernel) {
  auto be = kernels::make_cpu_backend();
  auto pool = std::make_shared<KvPool>(*be);
  KvRows t(pool, key_layout());
  std::vector<uint8_t> rows = rows_from(0, 3);
  append(*be, t, rows);
  EXPECT_DEATH(t.blocks(), "block addresses uploaded");
}

TEST(KvRows, ContiguousRowsForThePlainFormat) {
  auto be = kernels::make_cpu_backend();
  KvRows t(be.get(), plain_kv_layout(4));
  EXPECT_FALSE(t.paged());
  EXPECT_FALSE(t.blocks().paged());
  std::vector<float> x(12);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) * 0.5f;
  std::vector<kernels::RowCopy> copies;
  t.append(TensorView(x.data(), DType::kF32, {3, 4}), copies);
  be->copy_rows_batch(copies.data(), copies.size());
  const std::vector<uint8_t> got = t.read(*be);
  ASSERT_EQ(got.size(), x.size() * 4);
  EXPECT_EQ(std::memcmp(got.data(), x.data(), got.size()), 0);
  EXPECT_EQ(t.view().dtype, DType::kF32);
  EXPECT_DEATH(KvRows(std::make_shared<KvPool>(*be), plain_kv_layout(4)), "compact rows");
}

}  // namespace
}  // namespace v4rt::model
