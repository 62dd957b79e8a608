// SPDX-License-Identifier: MIT
// StepGraph: a decode step of the CUDA backend recorded by stream capture and run as one CUDA graph
// (Backend::begin_graph / end_graph), so the GPU runs the step's few hundred kernels back to back
// instead of waiting on one host launch after another.
//
// Every step is captured anew: its kernels take the step's positions, KV lengths, block tables and
// part descriptors as parameters, which change with every token. The captured graph then updates a
// cached executable of the same topology in place (cudaGraphExecUpdate, which rewrites node
// parameters and launch geometry but not the node list) and is instantiated only when none
// matches. A step's topology depends on which kernels it launches (a completed compression block,
// the launchers' branches), which the cache of kMaxExecs executables holds for a steady batch.
// Off by default (CudaBackendOptions::graphs): measured on an H100, the capture and the update of
// every step cost more host time than the launches they replace (docs/CUDA.md).
//
// While recording, nothing may wait for the device: uploads are staged in pinned host memory
// that the graph reads when it runs (stage()), scratch memory comes from the capture cache
// (capture_memory.h), and a buffer replaced mid-step stays alive until the graph has run
// (retire()). The first step asked for runs eagerly (lazy set-up: cuBLASLt plans, pointer tables,
// the pool's first blocks) and only later steps are recorded.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/device.h"

namespace v4rt::kernels::cuda {

class StepGraph {
 public:
  explicit StepGraph(cudaStream_t stream);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  bool recording() const { return recording_; }
  // Starts recording the stream (after the previous graph has run), or lets the first step run
  // eagerly.
  void begin();
  // Ends the recording and enqueues the step: the cached executable updated in place, or a new one.
  void end();
  // Drops an unfinished recording; none of its ops runs.
  void abort();
  // Where an upload recorded now reads from: a copy of `bytes` bytes of `src` in pinned memory that
  // stays as it is until the graph has run.
  const void* stage(const void* src, size_t bytes);
  // Keeps `buffer` alive until the graph recorded now has run.
  void retire(DeviceBuffer&& buffer);
  // The counts, with the GPU time of the last graph once it has run.
  GraphStats stats() const;

 private:
  static constexpr size_t kMaxExecs = 8;
  struct Cached {
    cudaGraphExec_t exec = nullptr;
    size_t nodes = 0;
  };
  struct Pinned {
    char* data = nullptr;
    size_t bytes = 0;
  };
  cudaGraphExec_t executable(cudaGraph_t graph);
  void wait_for_last_launch();

  cudaStream_t stream_;
  bool recording_ = false;
  bool warmed_up_ = false;
  std::list<Cached> execs_;        // most recently used first
  std::vector<Pinned> staging_;    // pinned chunks; the step's uploads fill them in order
  size_t chunk_ = 0, offset_ = 0;  // next free byte: staging_[chunk_].data + offset_
  std::vector<DeviceBuffer> retired_;
  cudaEvent_t launched_ = nullptr;  // recorded after the last graph launch
  cudaEvent_t run_begin_ = nullptr, run_end_ = nullptr;  // timing: around the last graph launch
  bool launch_pending_ = false;
  GraphStats stats_;
};

}  // namespace v4rt::kernels::cuda
