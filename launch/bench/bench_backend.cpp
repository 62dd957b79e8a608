// SPDX-License-Identifier: MIT
// BenchBackend: the selected backend with --config's kernel settings, profiled on CUDA.
#include "launch/bench/bench_backend.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "launch/backend_option.h"
#include "launch/runtime_config.h"

#if defined(V4RT_HAVE_CUDA)
#include "kernels/cuda/profiling_backend.h"
#endif

namespace v4rt::launch {

BenchBackend::BenchBackend(const std::string& backend, int device, const std::string& config, bool graphs) {
  const RuntimeConfig rc = config.empty() ? RuntimeConfig{} : load_runtime_config(config);
  kernels::BackendOptions options = backend_options(rc, device);
  options.cuda_graphs = rc.cuda_graphs && graphs;
  inner_ = make_selected_backend(backend, options);
  active_ = inner_.get();
#if defined(V4RT_HAVE_CUDA)
  if (backend == "cuda") {
    const kernels::cuda::DeviceInfo info = kernels::cuda::device_info();
    free_bytes_ = double(info.free_bytes);
    std::printf("  device: %s, %d SMs, %.1f GiB free of %.1f GiB\n", info.name.c_str(), info.sms,
                double(info.free_bytes) / (1 << 30), double(info.total_bytes) / (1 << 30));
    std::printf("  launches: %s; expert GEMV L2 prefetch %d B; expert GEMM activation tiles by %s%s\n",
                options.cuda_pdl ? "programmatic (debug.cuda_pdl)" : "stream-ordered (debug.cuda_pdl: false)",
                options.cuda_fp4_gemv_l2_prefetch,
                options.cuda_expert_ws_a_copy == 0   ? "cp.async"
                : options.cuda_expert_ws_a_copy == 1 ? "TMA"
                                                     : "TMA multicast in clusters of two",
                options.cuda_expert_ws_weight_ring ? ", weights through their own ring" : "");
    auto profiling = kernels::cuda::make_profiling_backend(*inner_);
    profiler_ = profiling.get();
    wrapper_ = std::move(profiling);
    active_ = profiler_;
  }
#endif
}

BenchBackend::~BenchBackend() = default;

OpTotals BenchBackend::profile(const std::function<void()>& run, const std::string& what, int64_t hidden,
                               int64_t vocab, const OpRowSink& sink) {
  OpTotals t;
#if defined(V4RT_HAVE_CUDA)
  if (!profiler_) return t;
  profiler_->reset();
  profiler_->set_enabled(true);
  run();
  profiler_->set_enabled(false);
  std::printf("\n  per-op breakdown of %s (CUDA events; bytes = ideal traffic, roofline = max(bytes / 4.3 TB/s,"
              " FLOPs / peak), peak 790 TFLOP/s bf16, 1580 FP8):\n", what.c_str());
  std::printf("  %-34s %6s %10s %10s %10s %11s %7s %9s\n", "op family", "calls", "ms", "MB", "GFLOP", "roofline ms",
              "ratio", "TFLOP/s");
  std::string head_shape(1, 'x');  // "x" + to_string(): a false -Wrestrict in GCC 12
  head_shape += std::to_string(hidden);
  const std::string vocab_str = std::to_string(vocab);
  for (const auto& [fam, s] : profiler_->stats()) {
    const double roof = std::max(s.bytes / kH200HbmBytesPerSec, s.peak_flops > 0 ? s.flops / s.peak_flops : 0) * 1e3;
    t.ms += s.ms;
    t.roofline_ms += roof;
    const bool head_op = (fam.find(head_shape) != std::string::npos && fam.find(vocab_str) != std::string::npos) ||
                         fam == "hc_head" || fam == "embedding";
    if (head_op) t.head_ms += s.ms, t.head_roofline_ms += roof;
    std::printf("  %-34s %6lld %10.3f %10.2f %10.3f %11.4f %6.1f%% %9.1f\n", fam.c_str(),
                static_cast<long long>(s.calls), s.ms, s.bytes / 1e6, s.flops / 1e9, roof,
                s.ms > 0 ? 100.0 * roof / s.ms : 0.0, s.ms > 0 ? s.flops / s.ms / 1e9 : 0.0);
    sink(fam, double(s.calls), s.ms, s.bytes, s.flops, roof);
  }
  std::printf("  %-34s %6s %10.3f %10s %10s %11.4f %6.1f%%\n", "total (op time)", "", t.ms, "", "", t.roofline_ms,
              t.ms > 0 ? 100.0 * t.roofline_ms / t.ms : 0.0);
  sink("total (op time)", 0, t.ms, 0, 0, t.roofline_ms);
#else
  (void)run, (void)what, (void)hidden, (void)vocab, (void)sink;
#endif
  return t;
}

}  // namespace v4rt::launch
