// SPDX-License-Identifier: MIT
// The compact KV cache's memory: one pool per backend (per GPU) of fixed-size blocks. Every
// sequence's compressed entries and indexer keys (KvRows, model/kv_rows.h) live in blocks of
// kKvBlockRows rows handed out from slabs that are allocated once and never move, so sequences of
// any length share the memory without fragmentation, a freed block serves the next sequence at
// once, and a row's address never changes while its sequence holds it. docs/KV_CACHE.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/tensor.h"
#include "kernels/backend.h"

namespace v4rt::model {

constexpr int kKvBlockShift = 6;  // rows per block = 64 (of one row format)
constexpr int64_t kKvBlockRows = int64_t(1) << kKvBlockShift;

class KvPool;

// The blocks of one size. A block is `block_bytes` bytes, 256-byte aligned. A block handed out is
// reference-counted: a table that takes it holds one reference, and a prefix cache entry or another
// table that shares it (KvBlockRef, KvRows::append_shared) holds one more; it is free again when the
// last holder releases it.
class KvBlockPool {
 public:
  KvBlockPool(KvPool& owner, int64_t block_bytes) : owner_(owner), block_bytes_(block_bytes) {}
  int64_t block_bytes() const { return block_bytes_; }
  // A free block, with one reference; a new slab when none is free. Throws v4rt::Error when the
  // pool's byte limit leaves no room for another slab.
  uint8_t* allocate();
  void retain(uint8_t* block);   // one more holder of a block handed out
  void release(uint8_t* block);  // one holder fewer; the last one frees it
  int use_count(uint8_t* block) const;  // holders of a block handed out
  int64_t blocks_in_use() const { return blocks_ - int64_t(free_.size()); }
  int64_t blocks_reserved() const { return blocks_; }

 private:
  KvPool& owner_;
  int64_t block_bytes_;
  std::vector<Buffer> slabs_;
  std::vector<uint8_t*> free_;
  std::unordered_map<uint8_t*, int> refs_;  // holders of each block handed out
  int64_t blocks_ = 0;  // in all slabs
};

class KvPool {
 public:
  // max_bytes: the most the slabs may take in all (0: no limit).
  explicit KvPool(kernels::Backend& backend, int64_t max_bytes = 0) : backend_(backend), max_bytes_(max_bytes) {}
  kernels::Backend& backend() const { return backend_; }
  int64_t max_bytes() const { return max_bytes_; }
  // The blocks of `row_bytes`-byte rows.
  KvBlockPool& blocks_for(int64_t row_bytes);
  int64_t reserved_bytes() const { return reserved_bytes_; }  // slabs allocated
  int64_t used_bytes() const;                                 // blocks held by tables

 private:
  friend class KvBlockPool;
  kernels::Backend& backend_;
  int64_t max_bytes_;
  int64_t reserved_bytes_ = 0;
  std::map<int64_t, std::unique_ptr<KvBlockPool>> pools_;  // by block bytes
};

// Bytes a block of `row_bytes`-byte rows takes in the pool (kKvBlockRows rows, 256-byte aligned).
int64_t kv_block_bytes(int64_t row_bytes);

// One reference to a full block of a pool, held outside any table (a prefix cache's entry block):
// copying retains the block, destroying releases it, and the pool lives as long as a reference.
class KvBlockRef {
 public:
  KvBlockRef() = default;
  // A reference to `block`, a block of `row_bytes`-byte rows that a table of `pool` holds.
  KvBlockRef(std::shared_ptr<KvPool> pool, int64_t row_bytes, uint8_t* block);
  ~KvBlockRef() { reset(); }
  KvBlockRef(const KvBlockRef& other) { *this = other; }
  KvBlockRef& operator=(const KvBlockRef& other);
  KvBlockRef(KvBlockRef&& other) noexcept { *this = std::move(other); }
  KvBlockRef& operator=(KvBlockRef&& other) noexcept;

  explicit operator bool() const { return block_ != nullptr; }
  uint8_t* block() const { return block_; }
  int64_t row_bytes() const { return row_bytes_; }
  const std::shared_ptr<KvPool>& pool() const { return pool_; }
  void reset();

 private:
  std::shared_ptr<KvPool> pool_;
  KvBlockPool* blocks_ = nullptr;  // pool_'s blocks of this row size
  int64_t row_bytes_ = 0;
  uint8_t* block_ = nullptr;
};

}  // namespace v4rt::model
