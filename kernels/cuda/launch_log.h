// SPDX-License-Identifier: MIT
// LaunchLog: the work of one decode step on the backend stream, written down instead of enqueued,
// so that a step graph (step_graph.h) can replay the executable of an earlier step with the same
// launches after changing only what differs (kernel parameters, grids, copy addresses), without
// capturing the step again.
//
// While a log is active on this thread for a stream, every op the CUDA backend issues on that
// stream goes through it: kernels by launch() (launch.cuh), copies and memsets by copy_async /
// memset_async, library calls (cuBLASLt) by run_async with a key of their arguments. Each op is
// one record:
//   kernel   the function, its grid, block, dynamic shared memory and parameters packed by value;
//   copy     a 1-D cudaMemcpyAsync (dst, src, bytes, kind);
//   memset   a 1-D cudaMemsetAsync (dst, value, bytes);
//   opaque   a call that enqueues work of its own, with the bytes of its arguments as its key; the
//            key's first shape_bytes fix which kernels it enqueues (a cuBLASLt plan), the rest
//            are addresses. It becomes one child-graph node, captured on a side stream.
// The records' shape (kinds, copy sizes and kinds, memset sizes and values, opaque keys' shape
// bytes) decides whether a cached executable can take the step; the rest (kernel functions, grids,
// parameters, copy and memset addresses, an opaque call's child graph) is updated node by node.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

namespace v4rt::kernels::cuda {

struct LaunchRecord {
  enum class Kind : uint8_t { kKernel, kCopy, kMemset, kOpaque };
  Kind kind = Kind::kKernel;
  const void* func = nullptr;  // kernel
  dim3 grid, block;
  uint32_t smem = 0;
  bool programmatic = false;   // kernel: launched with programmatic stream serialization (launch.cuh)
  uint32_t first_arg = 0, num_args = 0;  // kernel: its parameters' offsets in LaunchLog::arg_offsets
  uint32_t data = 0, bytes = 0;          // kernel parameters or an opaque key: arena bytes [data, data + bytes)
  uint32_t shape_bytes = 0;              // opaque: the key's leading bytes that fix its kernels
  void* dst = nullptr;                   // copy, memset
  const void* src = nullptr;             // copy
  size_t count = 0;                      // copy, memset: bytes
  cudaMemcpyKind copy_kind = cudaMemcpyDefault;
  int value = 0;                                 // memset
  std::function<void(cudaStream_t)> run;         // opaque
};

class LaunchLog {
 public:
  LaunchLog() = default;
  LaunchLog(const LaunchLog&) = delete;
  LaunchLog& operator=(const LaunchLog&) = delete;
  LaunchLog(LaunchLog&&) = default;  // never while active
  LaunchLog& operator=(LaunchLog&&) = default;

  // The log this thread writes to for work on `stream`, nullptr when that work is enqueued.
  static LaunchLog* active_for(cudaStream_t stream);
  // Makes this log the thread's log for `stream` (cleared first) / ends it.
  void activate(cudaStream_t stream);
  void deactivate();

  // Kernel records: add_kernel() returns zeroed space for the packed parameters (16-byte aligned);
  // add_arg() then marks where each parameter starts in it, in order.
  unsigned char* add_kernel(const void* func, dim3 grid, dim3 block, size_t smem, size_t param_bytes);
  void add_arg(uint32_t offset);
  void add_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
  void add_memset(void* dst, int value, size_t bytes);
  void add_opaque(const void* key, size_t key_bytes, size_t shape_bytes, std::function<void(cudaStream_t)> run);

  size_t size() const { return records_.size(); }
  const LaunchRecord& operator[](size_t i) const { return records_[i]; }
  const unsigned char* bytes(const LaunchRecord& r) const { return arena_.get() + r.data; }
  // The kernel's parameter pointers, as cudaLaunchKernel and kernel node parameters take them
  // (valid until the next call).
  void** args(const LaunchRecord& r);
  // Whether `o` holds the same shape of work (see above), so an executable of one takes the other.
  bool same_shape(const LaunchLog& o) const;
  // Whether record i differs from o's (after same_shape).
  bool same_record(size_t i, const LaunchLog& o) const;
  // Enqueues every record on `stream` (a capture), handing each record's node to `node` (its
  // record index and the node just captured). Opaque records are captured on `side` (a stream of
  // the same device, idle) and added as child-graph nodes.
  void issue(cudaStream_t stream, cudaStream_t side, const std::function<void(size_t, cudaGraphNode_t)>& node);
  // An opaque record's work as a graph of its own, captured on `side`; the caller destroys it.
  static cudaGraph_t capture_opaque(const LaunchRecord& r, cudaStream_t side);
  void clear();
  void swap(LaunchLog& o) noexcept;

 private:
  unsigned char* reserve(size_t bytes);
  std::vector<LaunchRecord> records_;
  std::vector<uint32_t> arg_offsets_;
  std::unique_ptr<unsigned char[]> arena_;
  size_t arena_size_ = 0, arena_used_ = 0;
  std::vector<void*> arg_ptrs_;
  cudaStream_t stream_ = nullptr;
};

// Programmatic dependent launch of this folder's kernels (launch.cuh), for the whole process: set
// by the CUDA backend from CudaBackendOptions::pdl; on until then.
bool programmatic_launch();
void set_programmatic_launch(bool on);
// A launch configuration with the programmatic serialization attribute in `attr` (one entry).
cudaLaunchConfig_t programmatic_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                       cudaLaunchAttribute* attr);

// The ops the backend enqueues besides kernels: logged while a LaunchLog is active for `stream`,
// enqueued otherwise.
void copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
void memset_async(void* dst, int value, size_t bytes, cudaStream_t stream);
// A call that enqueues its own work on the stream it is given (a library call); `key` is the bytes
// of every argument it reads, so equal keys mean the same work, and its first `shape_bytes` fix
// which kernels the call enqueues (equal there, a replay recaptures only this call).
void run_async(const void* key, size_t key_bytes, size_t shape_bytes, cudaStream_t stream,
               std::function<void(cudaStream_t)> run);

}  // namespace v4rt::kernels::cuda
