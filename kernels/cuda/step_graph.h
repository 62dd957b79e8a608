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
// Replay (CudaBackendOptions::graph_replay): instead of being captured, the step is written down
// by a LaunchLog (launch_log.h) as the backend issues it. A cached executable whose launches have
// the same shape takes the step: only the kernel nodes whose parameters or grids changed, and the
// copies and memsets whose addresses changed, are set in it (cudaGraphExec*NodeSetParams), a
// library call on new addresses is captured alone on a side stream and set as its child-graph node,
// and the executable is launched. Any other step is captured by issuing its log, and its
// executable joins the cache.
// So a steady decode step costs the host its own bookkeeping and a few node updates, no capture.
// Segments (set_segments, with replay): segment() ends the log at a layer's end and launches that
// part of the step at once (its own executable, cached by its index in the step), then logs the
// rest; the host then logs layer i + 1 while the GPU runs layer i instead of before it. A step
// that fails after a segment was launched has run that part (the serving engine stops on any
// step error, as for an op-by-op step).
// A stream capture stays open while a step is logged, so an op that does not go through the log
// lands in that capture instead of running early; end() then refuses the step, naming the op's
// kind.
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
#include "kernels/cuda/launch_log.h"

namespace v4rt::kernels::cuda {

class StepGraph {
 public:
  explicit StepGraph(cudaStream_t stream);
  // Logs steps and replays cached executables (above) instead of capturing every step; set before
  // the first step.
  void set_replay(bool on) { replay_ = on; }
  // With replay: steps launched a segment at a time (above); set before the first step.
  void set_segments(bool on) { segments_ = on; }
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  bool recording() const { return recording_; }
  // Starts recording the stream (after the previous graph has run), or lets the first step run
  // eagerly.
  void begin();
  // Ends the recording and enqueues the step: the cached executable updated in place, or a new one.
  void end();
  // With segments: enqueues what was logged since the last segment and goes on logging; no-op
  // otherwise.
  void segment();
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
  // A replayable executable: the graph it was instantiated from (its nodes are the handles that
  // updates name), the node of each record (a child-graph node for an opaque one), and the log of
  // the step it last ran.
  struct Replay {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    std::vector<cudaGraphNode_t> nodes;
    int64_t graph_nodes = 0;
    LaunchLog log;
  };
  cudaGraphExec_t executable(cudaGraph_t graph);
  void wait_for_last_launch();
  // Enqueues exec; `first`: the step's first launch (its GPU time starts there).
  void launch_graph(cudaGraphExec_t exec, bool first);
  // The end of a logged step or segment: the executable that runs it (replayed or captured from
  // log_), from the cache of segment index `segment`.
  cudaGraphExec_t replay_or_capture(size_t segment);
  void begin_log();  // the guard capture and the log of the next segment
  bool update(Replay& r);  // sets the nodes that differ; false when the executable refused one
  void close_guard();      // ends the guard capture; refuses a step that put ops in it
  void discard_step();     // after a step none of whose ops will run: its log, frees, retired buffers
  static void destroy(Replay& r);

  cudaStream_t stream_;
  cudaStream_t side_ = nullptr;  // replay: captures the opaque records alone
  bool recording_ = false;
  bool warmed_up_ = false;
  bool replay_ = false;
  bool segments_ = false;
  size_t segment_ = 0;             // the segment being logged (0 without segments)
  std::list<Cached> execs_;        // most recently used first
  std::vector<std::list<Replay>> replays_;  // per segment index, most recently used first
  LaunchLog log_;                  // the step being logged (replay_)
  std::vector<Pinned> staging_;    // pinned chunks; the step's uploads fill them in order
  size_t chunk_ = 0, offset_ = 0;  // next free byte: staging_[chunk_].data + offset_
  std::vector<DeviceBuffer> retired_;
  cudaEvent_t launched_ = nullptr;  // recorded after the last graph launch
  cudaEvent_t run_begin_ = nullptr, run_end_ = nullptr;  // timing: around the last graph launch
  bool launch_pending_ = false;
  GraphStats stats_;
};

}  // namespace v4rt::kernels::cuda
