// SPDX-License-Identifier: MIT
// The backend a model benchmark (`bench step`, `bench prefill`) times: --backend / --device with
// the kernel settings of --config (a runtime YAML whose debug switches pick kernel paths, e.g.
// `debug: {cuda_attention_tc: false}` times the SIMT prefill attention, and whose `cuda_graphs:`
// with --no-graphs decides whether decode steps run as CUDA graphs). On CUDA it sits behind
// the profiling backend, so one run can be broken down per op family against the H200 roofline:
// ideal bytes / 4.3 TB/s and FLOPs / 1,580 (FP8) or 790 (bf16) TFLOP/s.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace v4rt::kernels::cuda {
class ProfilingBackend;
}

namespace v4rt::launch {

constexpr double kH200HbmBytesPerSec = 4.3e12;  // HBM3e (device-to-device copy measured 4.28 TB/s)

// Sums of one profiled run; "head" = the embedding, hc_head and the vocabulary projection, which
// a projection to more layers does not scale.
struct OpTotals {
  double ms = 0, roofline_ms = 0;
  double head_ms = 0, head_roofline_ms = 0;
  double layer_ms() const { return ms - head_ms; }
  double layer_roofline_ms() const { return roofline_ms - head_roofline_ms; }
};

// One CSV row of an op family: (family, calls, ms, bytes, flops, roofline ms).
using OpRowSink = std::function<void(const std::string&, double, double, double, double, double)>;

class BenchBackend {
 public:
  // `config` (may be empty): a runtime YAML; only its debug switches and `cuda_graphs:` are used.
  // Step graphs are on when the config allows them and `graphs` (false: --no-graphs).
  BenchBackend(const std::string& backend, int device, const std::string& config, bool graphs);
  ~BenchBackend();
  BenchBackend(const BenchBackend&) = delete;
  BenchBackend& operator=(const BenchBackend&) = delete;

  kernels::Backend& get() { return *active_; }
  // Free device memory when the backend was made (0 on the CPU).
  double free_bytes_at_start() const { return free_bytes_; }
  // Whether profile() gives a per-op table (CUDA backends).
  bool can_profile() const { return profiler_ != nullptr; }
  // Runs `run` once with per-op CUDA events, prints the table of `what` ("one step") with one row
  // per op family (calls, ms, MB, GFLOP, roofline ms, ratio, TFLOP/s) and a total, hands every row
  // to `sink`, and returns the totals. `hidden` and `vocab` find the head's projection.
  OpTotals profile(const std::function<void()>& run, const std::string& what, int64_t hidden, int64_t vocab,
                   const OpRowSink& sink);

 private:
  std::unique_ptr<kernels::Backend> inner_;
  std::unique_ptr<kernels::Backend> wrapper_;            // owns *profiler_
  kernels::cuda::ProfilingBackend* profiler_ = nullptr;  // CUDA only
  kernels::Backend* active_ = nullptr;
  double free_bytes_ = 0;
};

}  // namespace v4rt::launch
