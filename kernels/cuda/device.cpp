// SPDX-License-Identifier: MIT
// Device discovery, RAII wrappers and the common Buffer allocator hook (see device.h).
#include "kernels/cuda/device.h"

#include <unistd.h>

#include <atomic>
#include <mutex>
#include <unordered_set>
#include <sstream>
#include <utility>
#include <vector>

#include "common/op_scope.h"
#include "common/tensor.h"
#include "kernels/cuda/capture_memory.h"
#include "kernels/cuda/cuda_check.h"

namespace v4rt::kernels::cuda {

namespace {
std::atomic<bool> g_sync_after_ops{false};

std::atomic<cudaStream_t> g_alloc_stream{nullptr};

// With an allocation stream: stream-ordered pool allocation (no device-wide synchronization on
// free; a freed block is reused only by work ordered after the free on that stream). Without:
// plain cudaMalloc / cudaFree (cudaFree synchronizes the device).
// Pool allocations, so each block is freed the way it was allocated.
std::mutex g_pool_mu;
std::unordered_set<void*> g_pool_blocks;

// Set while this thread records a step graph (StepGraph::begin .. end): its allocations come from
// the capture cache whatever stream orders the pool.
thread_local cudaStream_t t_recording = nullptr;
// Blocks freed while a graph that may still use them was being recorded: (the stream their free
// is ordered on, or nullptr for a cudaMalloc block; the block). Released by release_deferred_frees.
std::vector<std::pair<cudaStream_t, void*>> g_deferred;

void defer_free(cudaStream_t stream, void* p) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  g_deferred.emplace_back(stream, p);
}

void* device_alloc(size_t bytes) {
  if (t_recording) return capture_memory::alloc(bytes);
  void* p = nullptr;
  if (cudaStream_t s = g_alloc_stream.load()) {
    CUDA_CHECK(cudaMallocAsync(&p, bytes, s));
    std::lock_guard<std::mutex> lock(g_pool_mu);
    g_pool_blocks.insert(p);
  } else {
    CUDA_CHECK(cudaMalloc(&p, bytes));
  }
  return p;
}
void device_free(void* p) {
  if (capture_memory::release(p)) return;
  bool pooled = false;
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    pooled = g_pool_blocks.erase(p) > 0;
  }
  cudaStream_t s = g_alloc_stream.load();
  if (t_recording) {
    defer_free(pooled ? t_recording : nullptr, p);  // ordered after the graph that may read it
  } else if (pooled && s) {
    CUDA_CHECK(cudaFreeAsync(p, s));
  } else {
    CUDA_CHECK(cudaFree(p));  // also right for a pool block once no stream orders the frees
  }
}
}  // namespace

void set_recording_stream(cudaStream_t stream) { t_recording = stream; }

void* stream_alloc(size_t bytes, cudaStream_t stream) {
  if (t_recording) return capture_memory::alloc(bytes);
  void* p = nullptr;
  CUDA_CHECK(cudaMallocAsync(&p, bytes, stream));
  return p;
}

void stream_free(void* p, cudaStream_t stream) {
  if (!p || capture_memory::release(p)) return;
  if (t_recording) {
    defer_free(stream, p);
    return;
  }
  CUDA_CHECK(cudaFreeAsync(p, stream));
}

void release_deferred_frees() {
  std::vector<std::pair<cudaStream_t, void*>> all;
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    all.swap(g_deferred);
  }
  for (const auto& [stream, p] : all) {
    if (stream) CUDA_CHECK(cudaFreeAsync(p, stream));
    else CUDA_CHECK(cudaFree(p));
  }
}

void set_allocation_stream(cudaStream_t stream) {
  if (stream) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t keep = ~uint64_t(0);  // keep freed blocks in the pool across synchronizations
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  g_alloc_stream = stream;
}
cudaStream_t allocation_stream() { return g_alloc_stream.load(); }

std::string device_context() {
  int dev = -1, count = 0;
  (void)cudaGetDevice(&dev);
  (void)cudaGetDeviceCount(&count);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::ostringstream os;
  os << " [device " << dev << " of " << count << ", host " << host;
  const std::string scope = current_op_scope();  // the model's layer and op, when it set them
  if (!scope.empty()) os << ", at " << scope;
  os << "]";
  return os.str();
}

void set_sync_after_ops(bool on) { g_sync_after_ops = on; }
bool sync_after_ops() { return g_sync_after_ops; }

void launch_check(const char* op, cudaStream_t stream) {
  cudaError_t st = cudaGetLastError();
  if (st != cudaSuccess) {
    LOG(FATAL) << "kernel launch of " << op << " failed: " << cudaGetErrorString(st) << device_context();
  }
  if (g_sync_after_ops) {
    st = cudaStreamSynchronize(stream);
    if (st != cudaSuccess) {
      LOG(FATAL) << "op " << op << " faulted: " << cudaGetErrorString(st) << device_context();
    }
  }
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver/device" error
    return 0;
  }
  return n;
}

int num_sms() {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<int> cached[kMaxCachedDevices];  // 0: not yet queried
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= kMaxCachedDevices) {
    int v = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }
  int v = cached[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    cached[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

void install_device_allocator() { Buffer::set_device_allocator({&device_alloc, &device_free}); }

Stream::Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
Stream::~Stream() {
  if (stream_) CUDA_CHECK(cudaStreamDestroy(stream_));
}
Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (stream_) CUDA_CHECK(cudaStreamDestroy(stream_));
    stream_ = std::exchange(o.stream_, nullptr);
  }
  return *this;
}
void Stream::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

Event::Event() { CUDA_CHECK(cudaEventCreate(&event_)); }
Event::~Event() {
  if (event_) CUDA_CHECK(cudaEventDestroy(event_));
}
Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
    if (event_) CUDA_CHECK(cudaEventDestroy(event_));
    event_ = std::exchange(o.event_, nullptr);
  }
  return *this;
}
void Event::record(cudaStream_t stream) { CUDA_CHECK(cudaEventRecord(event_, stream)); }
void Event::synchronize() const { CUDA_CHECK(cudaEventSynchronize(event_)); }
float Event::elapsed_ms_since(const Event& start) const {
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes) CUDA_CHECK(cudaMalloc(&data_, bytes));
}
DeviceBuffer::~DeviceBuffer() { release(); }
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
void DeviceBuffer::release() {
  if (data_) CUDA_CHECK(cudaFree(data_));
  data_ = nullptr;
  bytes_ = 0;
}
void DeviceBuffer::copy_from_host(const void* src, size_t bytes, size_t offset) {
  CHECK_LE(offset + bytes, bytes_) << "copy_from_host past the end of a device buffer";
  CUDA_CHECK(cudaMemcpy(static_cast<char*>(data_) + offset, src, bytes, cudaMemcpyHostToDevice));
}
void DeviceBuffer::copy_to_host(void* dst, size_t bytes, size_t offset) const {
  CHECK_LE(offset + bytes, bytes_) << "copy_to_host past the end of a device buffer";
  CUDA_CHECK(cudaMemcpy(dst, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost));
}
void DeviceBuffer::fill_bytes(int value) {
  if (bytes_) CUDA_CHECK(cudaMemset(data_, value, bytes_));
}

}  // namespace v4rt::kernels::cuda
