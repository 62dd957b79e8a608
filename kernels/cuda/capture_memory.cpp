// SPDX-License-Identifier: MIT
// The block cache of capture_memory.h: best fit among free blocks of up to twice the request,
// else a new cudaMalloc (allowed while a stream is captured in relaxed mode, which the step graph
// uses). Blocks are never given back to the device: the cache grows to the largest step recorded.
#include "kernels/cuda/capture_memory.h"

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>

#include <glog/logging.h>

#include "kernels/cuda/cuda_check.h"

namespace v4rt::kernels::cuda::capture_memory {

namespace {

struct Block {
  size_t bytes = 0;
  bool used = false;
};

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free;        // by size
  std::unordered_map<void*, Block> blocks;  // every block, by address
};

Cache& cache() {
  static Cache* c = new Cache;  // outlives every static that might free into it at exit
  return *c;
}

// Sizes rounded so that a step's varying requests (a few rows more or less) land on one block.
size_t block_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20;
  if (bytes <= (size_t(1) << 20)) return (bytes + kSmall - 1) / kSmall * kSmall;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

}  // namespace

void* alloc(size_t bytes) {
  const size_t want = block_size(bytes == 0 ? 1 : bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.free.lower_bound(want);
  if (it != c.free.end() && it->first <= 2 * want) {
    void* p = it->second;
    c.free.erase(it);
    c.blocks[p].used = true;
    return p;
  }
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, want));
  c.blocks.emplace(p, Block{want, true});
  return p;
}

bool release(void* p) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.blocks.find(p);
  if (it == c.blocks.end()) return false;
  CHECK(it->second.used) << "capture memory block " << p << " freed twice";
  it->second.used = false;
  c.free.emplace(it->second.bytes, p);
  return true;
}

}  // namespace v4rt::kernels::cuda::capture_memory
