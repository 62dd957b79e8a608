// SPDX-License-Identifier: MIT
// Device plumbing for the CUDA backend: device discovery, RAII Stream / Event / DeviceBuffer, and
// the device allocator installed into common's Buffer (Buffer::set_device_allocator), so code
// above kernels/ can own device memory without linking CUDA itself.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace v4rt::kernels::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (never fatal).
int device_count();
// Streaming multiprocessors of the current device (queried once per device; launchers size grids
// and splits by it).
int num_sms();
// Installs cudaMalloc/cudaFree as common Buffer's device allocator (idempotent).
void install_device_allocator();
// Makes the allocator stream-ordered on `stream` (cudaMallocAsync / cudaFreeAsync from the device's
// default pool, kept across synchronizations); nullptr returns to cudaMalloc / cudaFree. Only
// correct while every user of the memory runs on `stream` or synchronizes with it before a free.
void set_allocation_stream(cudaStream_t stream);
cudaStream_t allocation_stream();

// The stream this thread records a step graph on (kernels/cuda/step_graph.h), nullptr when none.
// While set, Buffers and stream_alloc take blocks of the capture cache (capture_memory.h), so no
// memory node enters the graph, and frees of other blocks wait for release_deferred_frees.
void set_recording_stream(cudaStream_t stream);
// Scratch device memory for work on `stream`: from the stream-ordered pool, or while this thread
// records a graph from the capture cache. Free it with stream_free on the same stream.
void* stream_alloc(size_t bytes, cudaStream_t stream);
void stream_free(void* p, cudaStream_t stream);
// Frees of blocks the recorded graph may still use, made after the graph is enqueued (a free
// inside the capture would become a graph node freeing memory the graph did not allocate, or free
// it before the graph ran).
void release_deferred_frees();

class Stream {
 public:
  Stream();  // non-blocking stream on the current device
  ~Stream();
  Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  Event();  // timing-capable event
  ~Event();
  Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  Event& operator=(Event&& o) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }
  void record(cudaStream_t stream);
  void synchronize() const;
  // Milliseconds between `start` and this event (both recorded and complete).
  float elapsed_ms_since(const Event& start) const;

 private:
  cudaEvent_t event_ = nullptr;
};

// Owning, move-only device allocation of `bytes` bytes.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  void copy_from_host(const void* src, size_t bytes, size_t offset = 0);
  void copy_to_host(void* dst, size_t bytes, size_t offset = 0) const;
  void fill_bytes(int value);  // cudaMemset over the whole buffer (synchronous)

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace v4rt::kernels::cuda
