// SPDX-License-Identifier: MIT
// KvPool: slabs of fixed-size KV blocks.
#include "model/kv_pool.h"

#include <algorithm>
#include <cstdint>
#include <utility>

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
  refs_[b] = 1;
  return b;
}

void KvBlockPool::retain(uint8_t* block) {
  auto it = refs_.find(block);
  CHECK(it != refs_.end()) << "KV block retained but not handed out";
  ++it->second;
}

void KvBlockPool::release(uint8_t* block) {
  auto it = refs_.find(block);
  CHECK(it != refs_.end()) << "KV block released but not handed out";
  if (--it->second > 0) return;
  refs_.erase(it);
  free_.push_back(block);
}

int KvBlockPool::use_count(uint8_t* block) const {
  auto it = refs_.find(block);
  return it == refs_.end() ? 0 : it->second;
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

KvBlockRef::KvBlockRef(std::shared_ptr<KvPool> pool, int64_t row_bytes, uint8_t* block)
    : pool_(std::move(pool)), row_bytes_(row_bytes), block_(block) {
  CHECK(pool_ && block_) << "a KV block reference needs a pool and a block";
  blocks_ = &pool_->blocks_for(row_bytes_);
  blocks_->retain(block_);
}

KvBlockRef& KvBlockRef::operator=(const KvBlockRef& other) {
  if (this == &other) return *this;
  if (other.block_) other.blocks_->retain(other.block_);  // before the release: other may share our block
  reset();
  pool_ = other.pool_;
  blocks_ = other.blocks_;
  row_bytes_ = other.row_bytes_;
  block_ = other.block_;
  return *this;
}

KvBlockRef& KvBlockRef::operator=(KvBlockRef&& other) noexcept {
  if (this == &other) return *this;
  reset();
  pool_ = std::move(other.pool_);
  blocks_ = std::exchange(other.blocks_, nullptr);
  row_bytes_ = std::exchange(other.row_bytes_, 0);
  block_ = std::exchange(other.block_, nullptr);
  return *this;
}

void KvBlockRef::reset() {
  if (block_) blocks_->release(block_);
  block_ = nullptr;
  blocks_ = nullptr;
  pool_.reset();  // last: the pool may go with it
}

}  // namespace v4rt::model
