// SPDX-License-Identifier: MIT
// LaunchLog (see launch_log.h): records in a vector, kernel parameters and opaque keys in one
// arena of 16-byte aligned slots, reused from step to step.
#include "kernels/cuda/launch_log.h"

#include <glog/logging.h>

#include <algorithm>
#include <atomic>
#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace v4rt::kernels::cuda {

namespace {
std::atomic<bool> g_programmatic{true};
thread_local LaunchLog* t_log = nullptr;
thread_local cudaStream_t t_log_stream = nullptr;
constexpr size_t kAlign = 16;
}  // namespace

bool programmatic_launch() { return g_programmatic.load(std::memory_order_relaxed); }
void set_programmatic_launch(bool on) { g_programmatic.store(on, std::memory_order_relaxed); }

cudaLaunchConfig_t programmatic_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                       cudaLaunchAttribute* attr) {
  attr[0] = cudaLaunchAttribute{};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  return config;
}

LaunchLog* LaunchLog::active_for(cudaStream_t stream) {
  return t_log && stream == t_log_stream ? t_log : nullptr;
}

void LaunchLog::activate(cudaStream_t stream) {
  CHECK(t_log == nullptr) << "launch log: this thread already logs a step";
  clear();
  stream_ = stream;
  t_log = this;
  t_log_stream = stream;
}

void LaunchLog::deactivate() {
  if (t_log != this) return;
  t_log = nullptr;
  t_log_stream = nullptr;
}

void LaunchLog::clear() {
  records_.clear();
  arg_offsets_.clear();
  arena_used_ = 0;
}

void LaunchLog::swap(LaunchLog& o) noexcept {
  records_.swap(o.records_);
  arg_offsets_.swap(o.arg_offsets_);
  arena_.swap(o.arena_);
  std::swap(arena_size_, o.arena_size_);
  std::swap(arena_used_, o.arena_used_);
}

unsigned char* LaunchLog::reserve(size_t bytes) {
  const size_t at = (arena_used_ + kAlign - 1) / kAlign * kAlign;
  if (at + bytes > arena_size_) {
    const size_t size = std::max({size_t(64) << 10, 2 * arena_size_, at + bytes});
    std::unique_ptr<unsigned char[]> grown(new unsigned char[size]);
    if (arena_used_) std::memcpy(grown.get(), arena_.get(), arena_used_);
    arena_.swap(grown);
    arena_size_ = size;
  }
  arena_used_ = at + bytes;
  std::memset(arena_.get() + at, 0, bytes);  // padding compares equal
  return arena_.get() + at;
}

unsigned char* LaunchLog::add_kernel(const void* func, dim3 grid, dim3 block, size_t smem, size_t param_bytes) {
  unsigned char* p = reserve(param_bytes);
  LaunchRecord r;
  r.kind = LaunchRecord::Kind::kKernel;
  r.func = func;
  r.grid = grid;
  r.block = block;
  r.smem = uint32_t(smem);
  r.programmatic = programmatic_launch();
  r.first_arg = uint32_t(arg_offsets_.size());
  r.data = uint32_t(p - arena_.get());
  r.bytes = uint32_t(param_bytes);
  records_.push_back(std::move(r));
  return p;
}

void LaunchLog::add_arg(uint32_t offset) {
  arg_offsets_.push_back(offset);
  records_.back().num_args++;
}

void LaunchLog::add_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  LaunchRecord r;
  r.kind = LaunchRecord::Kind::kCopy;
  r.dst = dst;
  r.src = src;
  r.count = bytes;
  r.copy_kind = kind;
  records_.push_back(std::move(r));
}

void LaunchLog::add_memset(void* dst, int value, size_t bytes) {
  LaunchRecord r;
  r.kind = LaunchRecord::Kind::kMemset;
  r.dst = dst;
  r.value = value;
  r.count = bytes;
  records_.push_back(std::move(r));
}

void LaunchLog::add_opaque(const void* key, size_t key_bytes, size_t shape_bytes,
                           std::function<void(cudaStream_t)> run) {
  CHECK_LE(shape_bytes, key_bytes) << "launch log: an opaque key's shape is part of the key";
  unsigned char* p = reserve(key_bytes);
  std::memcpy(p, key, key_bytes);
  LaunchRecord r;
  r.kind = LaunchRecord::Kind::kOpaque;
  r.data = uint32_t(p - arena_.get());
  r.bytes = uint32_t(key_bytes);
  r.shape_bytes = uint32_t(shape_bytes);
  r.run = std::move(run);
  records_.push_back(std::move(r));
}

void** LaunchLog::args(const LaunchRecord& r) {
  arg_ptrs_.resize(r.num_args);
  for (uint32_t a = 0; a < r.num_args; ++a) arg_ptrs_[a] = arena_.get() + r.data + arg_offsets_[r.first_arg + a];
  return arg_ptrs_.data();
}

bool LaunchLog::same_shape(const LaunchLog& o) const {
  if (records_.size() != o.records_.size()) return false;
  for (size_t i = 0; i < records_.size(); ++i) {
    const LaunchRecord &a = records_[i], &b = o.records_[i];
    if (a.kind != b.kind) return false;
    switch (a.kind) {
      case LaunchRecord::Kind::kKernel:  // function, geometry and parameters are all updatable
        if (a.programmatic != b.programmatic) return false;  // the edge's type
        break;
      case LaunchRecord::Kind::kCopy:
        if (a.count != b.count || a.copy_kind != b.copy_kind) return false;
        break;
      case LaunchRecord::Kind::kMemset:  // the captured node's element size and value stay
        if (a.count != b.count || a.value != b.value) return false;
        break;
      case LaunchRecord::Kind::kOpaque:
        if (a.bytes != b.bytes || a.shape_bytes != b.shape_bytes ||
            std::memcmp(bytes(a), o.bytes(b), a.shape_bytes) != 0)
          return false;
        break;
    }
  }
  return true;
}

bool LaunchLog::same_record(size_t i, const LaunchLog& o) const {
  const LaunchRecord &a = records_[i], &b = o.records_[i];
  switch (a.kind) {
    case LaunchRecord::Kind::kKernel:
      return a.func == b.func && a.grid.x == b.grid.x && a.grid.y == b.grid.y && a.grid.z == b.grid.z &&
             a.block.x == b.block.x && a.block.y == b.block.y && a.block.z == b.block.z && a.smem == b.smem &&
             a.bytes == b.bytes && a.num_args == b.num_args && std::memcmp(bytes(a), o.bytes(b), a.bytes) == 0;
    case LaunchRecord::Kind::kCopy:
      return a.dst == b.dst && a.src == b.src;
    case LaunchRecord::Kind::kMemset:
      return a.dst == b.dst;
    case LaunchRecord::Kind::kOpaque:
      return std::memcmp(bytes(a), o.bytes(b), a.bytes) == 0;  // equal sizes (same_shape)
  }
  return true;
}

cudaGraph_t LaunchLog::capture_opaque(const LaunchRecord& r, cudaStream_t side) {
  CUDA_CHECK(cudaStreamBeginCapture(side, cudaStreamCaptureModeRelaxed));
  try {
    r.run(side);
  } catch (...) {
    cudaGraph_t g = nullptr;
    (void)cudaStreamEndCapture(side, &g);
    if (g) (void)cudaGraphDestroy(g);
    throw;
  }
  cudaGraph_t g = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(side, &g));
  return g;
}

namespace {

// Adds `child` as a child-graph node after the current dependencies of the capture on `stream`,
// which then depends on that node alone; `child` is destroyed (the node holds a copy).
void add_child_node(cudaStream_t stream, cudaGraph_t child) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  const cudaGraphNode_t* deps = nullptr;
  size_t num_deps = 0;
  cudaGraphNode_t added = nullptr;
  cudaError_t st = cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph, &deps, nullptr, &num_deps);
  if (st == cudaSuccess) st = cudaGraphAddChildGraphNode(&added, graph, deps, num_deps, child);
  (void)cudaGraphDestroy(child);
  CUDA_CHECK(st);
  CUDA_CHECK(cudaStreamUpdateCaptureDependencies(stream, &added, nullptr, 1, cudaStreamSetCaptureDependencies));
}

}  // namespace

void LaunchLog::issue(cudaStream_t stream, cudaStream_t side,
                      const std::function<void(size_t, cudaGraphNode_t)>& node) {
  for (size_t i = 0; i < records_.size(); ++i) {
    const LaunchRecord& r = records_[i];
    switch (r.kind) {
      case LaunchRecord::Kind::kKernel:
        if (r.programmatic) {
          cudaLaunchAttribute attr[1];
          const cudaLaunchConfig_t config = programmatic_config(r.grid, r.block, r.smem, stream, attr);
          CUDA_CHECK(cudaLaunchKernelExC(&config, r.func, args(r)));
        } else {
          CUDA_CHECK(cudaLaunchKernel(r.func, r.grid, r.block, args(r), r.smem, stream));
        }
        break;
      case LaunchRecord::Kind::kCopy:
        CUDA_CHECK(cudaMemcpyAsync(r.dst, r.src, r.count, r.copy_kind, stream));
        break;
      case LaunchRecord::Kind::kMemset:
        CUDA_CHECK(cudaMemsetAsync(r.dst, r.value, r.count, stream));
        break;
      case LaunchRecord::Kind::kOpaque:  // captured alone on the side stream: one child-graph node
        add_child_node(stream, capture_opaque(r, side));
        break;
    }
    // Every record leaves one node at the end of the capture: its own.
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    const cudaGraphNode_t* deps = nullptr;
    size_t num_deps = 0;
    CUDA_CHECK(cudaStreamGetCaptureInfo(stream, &status, nullptr, nullptr, &deps, nullptr, &num_deps));
    CHECK(status == cudaStreamCaptureStatusActive && num_deps == 1)
        << "launch log: record " << i << " did not leave one node at the end of the capture";
    node(i, deps[0]);
  }
}

void copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (bytes == 0) return;
  if (LaunchLog* log = LaunchLog::active_for(stream)) return log->add_copy(dst, src, bytes, kind);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream));
}

void memset_async(void* dst, int value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  if (LaunchLog* log = LaunchLog::active_for(stream)) return log->add_memset(dst, value, bytes);
  CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream));
}

void run_async(const void* key, size_t key_bytes, size_t shape_bytes, cudaStream_t stream,
               std::function<void(cudaStream_t)> run) {
  if (LaunchLog* log = LaunchLog::active_for(stream)) {
    return log->add_opaque(key, key_bytes, shape_bytes, std::move(run));
  }
  run(stream);
}

}  // namespace v4rt::kernels::cuda
