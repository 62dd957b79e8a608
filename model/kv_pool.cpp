// SPDX-License-Identifier: MIT
// KvPool: slabs of fixed-size KV blocks.
#include "model/kv_pool.h"

#include <algorithm>
#include <cstdint>

#include "common/check.h"

namespace v4rt::model {
namespace {
constexpr int64_t kFirstSlabBlocks = 16;   // a slab's blocks: the first slab's, doubling to
constexpr int64_t kMaxSlabBlocks = 1024;   // at most this (Flash entries: 37 MB)
constexpr int64_t kSlack = 255;            // a slab's extra bytes, to start its first block 256-byte aligned
}  // namespace

int64_t kv_block_bytes(int64_t row_bytes) { return (kKvBlockRows * row_bytes + kSlack) / (kSlack + 1) * (kSlack + 1); }

uint8_t* KvBlockPool::allocate() {
  if (free_.empty()) {
    int64_t n = std::clamp(blocks_, kFirstSlabBlocks, kMaxSlabBlocks);
    if (owner_.max_bytes_ > 0) {  // the limit: a smaller slab, down to one block
      n = std::min(n, (owner_.max_bytes_ - owner_.reserved_bytes_ - kSlack) / block_bytes_);
      V4RT_REQUIRE(n > 0, "KV pool full: " << owner_.reserved_bytes_ << " of " << owner_.max_bytes_
                                           << " bytes reserved, no room for a block of " << block_bytes_
                                           << " bytes (" << blocks_in_use() << " blocks of this size in use)");
    }
    slabs_.push_back(owner_.backend_.alloc(size_t(n * block_bytes_ + kSlack)));  // whatever the allocator aligns to
    const uintptr_t at = reinterpret_cast<uintptr_t>(slabs_.back().data());
    auto* base = reinterpret_cast<uint8_t*>((at + kSlack) & ~uintptr_t(kSlack));
    for (int64_t i = n - 1; i >= 0; --i) free_.push_back(base + i * block_bytes_);  // lowest address first out
    blocks_ += n;
    owner_.reserved_bytes_ += n * block_bytes_ + kSlack;
  }
  uint8_t* b = free_.back();
  free_.pop_back();
  return b;
}

KvBlockPool& KvPool::blocks_for(int64_t row_bytes) {
  CHECK_GT(row_bytes, 0);
  const int64_t bytes = kv_block_bytes(row_bytes);
  std::unique_ptr<KvBlockPool>& p = pools_[bytes];
  if (!p) p = std::make_unique<KvBlockPool>(*this, bytes);
  return *p;
}

int64_t KvPool::used_bytes() const {
  int64_t b = 0;
  for (const auto& [bytes, p] : pools_) b += p->blocks_in_use() * bytes;
  return b;
}

}  // namespace v4rt::model
