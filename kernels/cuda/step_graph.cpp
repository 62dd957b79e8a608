// SPDX-License-Identifier: MIT
// StepGraph (see step_graph.h): capture in relaxed mode (cudaMalloc of the capture cache is allowed
// while recording), an LRU list of executables tried by node count, pinned staging in chunks; in
// replay mode an LRU list of executables with their logs, tried by the logs' shape.
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
  CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&launched_, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreate(&run_begin_));
  CUDA_CHECK(cudaEventCreate(&run_end_));
}

StepGraph::~StepGraph() {
  if (recording_) abort();
  (void)cudaEventSynchronize(launched_);
  for (Cached& c : execs_) (void)cudaGraphExecDestroy(c.exec);
  for (std::list<Replay>& list : replays_)
    for (Replay& r : list) destroy(r);
  for (Pinned& p : staging_) (void)cudaFreeHost(p.data);
  (void)cudaEventDestroy(launched_);
  (void)cudaEventDestroy(run_begin_);
  (void)cudaEventDestroy(run_end_);
  (void)cudaStreamDestroy(side_);
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
  segment_ = 0;
  set_recording_stream(stream_);
  begin_log();
  recording_ = true;
}

void StepGraph::begin_log() {
  // Replay: the capture only guards the log (an op that bypasses it lands here, not on the GPU).
  CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  if (replay_) log_.activate(stream_);
}

void StepGraph::segment() {
  if (!recording_ || !replay_ || !segments_) return;
  // On a throw the recording stays open for abort(), which drops what is left.
  close_guard();
  launch_graph(replay_or_capture(segment_), segment_ == 0);
  ++segment_;
  begin_log();
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

void StepGraph::destroy(Replay& r) {
  if (r.exec) (void)cudaGraphExecDestroy(r.exec);  // one still running is freed when it completes
  if (r.graph) (void)cudaGraphDestroy(r.graph);
  r.exec = nullptr;
  r.graph = nullptr;
}

void StepGraph::close_guard() {
  log_.deactivate();
  cudaGraph_t guard = nullptr;
  const cudaError_t st = cudaStreamEndCapture(stream_, &guard);
  size_t n = 0;
  cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
  if (st == cudaSuccess) {
    CUDA_CHECK(cudaGraphGetNodes(guard, nullptr, &n));
    if (n) {
      std::vector<cudaGraphNode_t> nodes(n);
      CUDA_CHECK(cudaGraphGetNodes(guard, nodes.data(), &n));
      CUDA_CHECK(cudaGraphNodeGetType(nodes[0], &type));
    }
    CUDA_CHECK(cudaGraphDestroy(guard));
  } else {
    (void)cudaGetLastError();
  }
  if (st != cudaSuccess || n) discard_step();
  V4RT_REQUIRE(st == cudaSuccess, "step graph: logging the decode step failed (" << cudaGetErrorString(st)
                                      << "); `--no-graphs` runs the step without a graph" << device_context());
  V4RT_REQUIRE(n == 0, "step graph: " << n << " op(s) of the decode step bypassed the launch log (the first a graph "
                                      << "node of type " << int(type) << ": 0 kernel, 1 copy, 2 memset); every "
                                      << "op on the backend stream must go through launch() / copy_async / "
                                      << "memset_async / run_async (kernels/cuda/launch_log.h); "
                                      << "`debug.cuda_graph_replay: false` captures the step instead");
}

bool StepGraph::update(Replay& r) {
  int64_t set = 0;
  for (size_t i = 0; i < log_.size(); ++i) {
    const LaunchRecord& rec = log_[i];
    if (log_.same_record(i, r.log)) continue;
    cudaError_t st = cudaSuccess;
    if (rec.kind == LaunchRecord::Kind::kOpaque) {  // same kernels, other addresses: a new child graph
      cudaGraph_t child = LaunchLog::capture_opaque(rec, side_);
      st = cudaGraphExecChildGraphNodeSetParams(r.exec, r.nodes[i], child);
      (void)cudaGraphDestroy(child);
    } else if (rec.kind == LaunchRecord::Kind::kKernel) {
      cudaKernelNodeParams kp{};
      kp.func = const_cast<void*>(rec.func);
      kp.gridDim = rec.grid;
      kp.blockDim = rec.block;
      kp.sharedMemBytes = rec.smem;
      kp.kernelParams = log_.args(rec);
      st = cudaGraphExecKernelNodeSetParams(r.exec, r.nodes[i], &kp);
    } else if (rec.kind == LaunchRecord::Kind::kCopy) {
      st = cudaGraphExecMemcpyNodeSetParams1D(r.exec, r.nodes[i], rec.dst, rec.src, rec.count, rec.copy_kind);
    } else {  // the captured node's element size, width and value (the runtime's choice), a new address
      cudaMemsetParams mp{};
      st = cudaGraphMemsetNodeGetParams(r.nodes[i], &mp);
      mp.dst = rec.dst;
      if (st == cudaSuccess) st = cudaGraphExecMemsetNodeSetParams(r.exec, r.nodes[i], &mp);
    }
    if (st != cudaSuccess) {
      (void)cudaGetLastError();  // a refused update is an answer: the step is captured instead
      LOG(WARNING) << "step graph: the cached executable refused an update of record " << i << " ("
                   << cudaGetErrorString(st) << "); capturing the step";
      return false;
    }
    ++set;
  }
  stats_.nodes_set += set;
  return true;
}

cudaGraphExec_t StepGraph::replay_or_capture(size_t segment) {
  if (replays_.size() <= segment) replays_.resize(segment + 1);
  std::list<Replay>& replays = replays_[segment];
  for (auto it = replays.begin(); it != replays.end(); ++it) {
    if (!log_.same_shape(it->log)) continue;
    if (!update(*it)) {
      destroy(*it);
      replays.erase(it);
      break;
    }
    it->log.swap(log_);  // the executable now holds this step
    replays.splice(replays.begin(), replays, it);
    stats_.replayed++;
    stats_.last_nodes = it->graph_nodes;
    return replays.front().exec;
  }
  Replay r;
  r.nodes.assign(log_.size(), nullptr);
  CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  try {
    log_.issue(stream_, side_, [&r](size_t i, cudaGraphNode_t node) { r.nodes[i] = node; });
  } catch (...) {
    cudaGraph_t g = nullptr;
    (void)cudaStreamEndCapture(stream_, &g);
    if (g) (void)cudaGraphDestroy(g);
    (void)cudaGetLastError();
    throw;
  }
  const cudaError_t st = cudaStreamEndCapture(stream_, &r.graph);
  V4RT_REQUIRE(st == cudaSuccess, "step graph: capturing the logged decode step failed (" << cudaGetErrorString(st)
                                      << "); `--no-graphs` runs the step without a graph" << device_context());
  size_t nodes = 0;
  CUDA_CHECK(cudaGraphGetNodes(r.graph, nullptr, &nodes));
  r.graph_nodes = int64_t(nodes);
  stats_.last_nodes = r.graph_nodes;
  CUDA_CHECK(cudaGraphInstantiate(&r.exec, r.graph, 0));
  r.log.swap(log_);
  replays.push_front(std::move(r));
  if (replays.size() > kMaxExecs) {
    destroy(replays.back());
    replays.pop_back();
  }
  stats_.instantiated++;
  return replays.front().exec;
}

void StepGraph::launch_graph(cudaGraphExec_t exec, bool first) {
  if (first) CUDA_CHECK(cudaEventRecord(run_begin_, stream_));
  CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  CUDA_CHECK(cudaEventRecord(run_end_, stream_));
  CUDA_CHECK(cudaEventRecord(launched_, stream_));
  launch_pending_ = true;
  release_deferred_frees();
}

void StepGraph::end() {
  if (!recording_) return;
  recording_ = false;
  set_recording_stream(nullptr);
  if (replay_) {
    close_guard();
    try {
      launch_graph(replay_or_capture(segment_), segment_ == 0);
    } catch (...) {
      discard_step();
      throw;
    }
    stats_.recorded++;
    return;
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t st = cudaStreamEndCapture(stream_, &graph);
  if (st != cudaSuccess) {
    (void)cudaGetLastError();
    discard_step();
  }
  V4RT_REQUIRE(st == cudaSuccess,
               "step graph: recording the decode step failed (" << cudaGetErrorString(st)
                   << "): an op of the step is not allowed in a CUDA graph; `--no-graphs` (runtime YAML "
                      "cuda_graphs: false) runs the step without one"
                   << device_context());
  const cudaGraphExec_t exec = executable(graph);
  CUDA_CHECK(cudaGraphDestroy(graph));
  launch_graph(exec, true);
  stats_.recorded++;
}

void StepGraph::abort() {
  if (!recording_) return;
  recording_ = false;
  set_recording_stream(nullptr);
  log_.deactivate();
  cudaGraph_t graph = nullptr;
  (void)cudaStreamEndCapture(stream_, &graph);
  if (graph) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();
  discard_step();
}

void StepGraph::discard_step() {
  log_.clear();
  release_deferred_frees();
  // Segments already launched may still read the retired buffers: they go once those have run.
  if (segment_ > 0) (void)cudaEventSynchronize(launched_);
  retired_.clear();
  segment_ = 0;
}

}  // namespace v4rt::kernels::cuda
