// SPDX-License-Identifier: MIT
// StepGraph (see step_graph.h): capture in relaxed mode (cudaMalloc of the capture cache is allowed
// while recording), an LRU list of executables tried by node count, pinned staging in chunks.
#include "kernels/cuda/step_graph.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstring>

#include "common/check.h"
#include "kernels/cuda/cuda_check.h"

namespace v4rt::kernels::cuda {

namespace {
constexpr size_t kFirstStagingBytes = size_t(4) << 20;
constexpr size_t kStagingAlign = 256;
}  // namespace

StepGraph::StepGraph(cudaStream_t stream) : stream_(stream) {
  CUDA_CHECK(cudaEventCreateWithFlags(&launched_, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreate(&run_begin_));
  CUDA_CHECK(cudaEventCreate(&run_end_));
}

StepGraph::~StepGraph() {
  if (recording_) abort();
  (void)cudaEventSynchronize(launched_);
  for (Cached& c : execs_) (void)cudaGraphExecDestroy(c.exec);
  for (Pinned& p : staging_) (void)cudaFreeHost(p.data);
  (void)cudaEventDestroy(launched_);
  (void)cudaEventDestroy(run_begin_);
  (void)cudaEventDestroy(run_end_);
}

void StepGraph::wait_for_last_launch() {
  if (!launch_pending_) return;
  CUDA_CHECK(cudaEventSynchronize(launched_));
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, run_begin_, run_end_));
  stats_.graph_gpu_ms += ms;
  stats_.timed++;
  launch_pending_ = false;
  retired_.clear();
}

void StepGraph::begin() {
  CHECK(!recording_) << "step graph: begin while a step is being recorded";
  // The staging memory and the retired buffers of the last graph are free once it has run (a
  // step ends with the copy of its ids or logits, so this rarely waits).
  wait_for_last_launch();
  chunk_ = offset_ = 0;
  if (!warmed_up_) {
    warmed_up_ = true;
    stats_.eager++;
    return;
  }
  if (staging_.empty()) {
    staging_.push_back({nullptr, kFirstStagingBytes});
    CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&staging_.back().data), kFirstStagingBytes, cudaHostAllocDefault));
  }
  CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  set_recording_stream(stream_);
  recording_ = true;
}

const void* StepGraph::stage(const void* src, size_t bytes) {
  CHECK(recording_) << "step graph: stage outside a recording";
  while (offset_ + bytes > staging_[chunk_].bytes) {
    ++chunk_;
    offset_ = 0;
    if (chunk_ == staging_.size()) {
      const size_t size = std::max(2 * staging_.back().bytes, bytes);
      staging_.push_back({nullptr, size});
      CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&staging_.back().data), size, cudaHostAllocDefault));
    }
  }
  char* dst = staging_[chunk_].data + offset_;
  std::memcpy(dst, src, bytes);
  offset_ = (offset_ + bytes + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
  return dst;
}

GraphStats StepGraph::stats() const {
  GraphStats s = stats_;
  if (!launch_pending_) return s;
  const cudaError_t done = cudaEventQuery(run_end_);
  float ms = 0.f;
  if (done == cudaSuccess) {
    CUDA_CHECK(cudaEventElapsedTime(&ms, run_begin_, run_end_));
    s.graph_gpu_ms += ms;
    s.timed++;
  } else if (done == cudaErrorNotReady) {
    (void)cudaGetLastError();  // a graph still running is an answer, not a fault
  } else {
    CUDA_CHECK(done);
  }
  return s;
}

void StepGraph::retire(DeviceBuffer&& buffer) { retired_.push_back(std::move(buffer)); }

cudaGraphExec_t StepGraph::executable(cudaGraph_t graph) {
  size_t nodes = 0;
  CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  stats_.last_nodes = int64_t(nodes);
  for (auto it = execs_.begin(); it != execs_.end(); ++it) {
    if (it->nodes != nodes) continue;
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(it->exec, graph, &info) == cudaSuccess) {
      execs_.splice(execs_.begin(), execs_, it);
      stats_.updated++;
      return execs_.front().exec;
    }
    (void)cudaGetLastError();  // a topology mismatch is an answer, not a fault
  }
  Cached c;
  c.nodes = nodes;
  CUDA_CHECK(cudaGraphInstantiate(&c.exec, graph, 0));
  execs_.push_front(c);
  if (execs_.size() > kMaxExecs) {
    // An executable still running is freed when it completes.
    CUDA_CHECK(cudaGraphExecDestroy(execs_.back().exec));
    execs_.pop_back();
  }
  stats_.instantiated++;
  return c.exec;
}

void StepGraph::end() {
  if (!recording_) return;
  recording_ = false;
  set_recording_stream(nullptr);
  cudaGraph_t graph = nullptr;
  const cudaError_t st = cudaStreamEndCapture(stream_, &graph);
  if (st != cudaSuccess) {  // nothing recorded will run
    (void)cudaGetLastError();
    release_deferred_frees();
    retired_.clear();
  }
  V4RT_REQUIRE(st == cudaSuccess,
               "step graph: recording the decode step failed (" << cudaGetErrorString(st)
                   << "): an op of the step is not allowed in a CUDA graph; `--no-graphs` (runtime YAML "
                      "cuda_graphs: false) runs the step without one"
                   << device_context());
  const cudaGraphExec_t exec = executable(graph);
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaEventRecord(run_begin_, stream_));
  CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  CUDA_CHECK(cudaEventRecord(run_end_, stream_));
  CUDA_CHECK(cudaEventRecord(launched_, stream_));
  launch_pending_ = true;
  stats_.recorded++;
  release_deferred_frees();
}

void StepGraph::abort() {
  if (!recording_) return;
  recording_ = false;
  set_recording_stream(nullptr);
  cudaGraph_t graph = nullptr;
  (void)cudaStreamEndCapture(stream_, &graph);
  if (graph) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();
  release_deferred_frees();
  retired_.clear();  // nothing recorded will run
}

}  // namespace v4rt::kernels::cuda
