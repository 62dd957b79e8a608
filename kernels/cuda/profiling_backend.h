// SPDX-License-Identifier: MIT
// A Backend decorator that times every op of an inner CUDA backend with CUDA events on its stream
// and attributes bytes moved and FLOPs to each call from the op's shapes (the ideal traffic: every
// weight, activation and cache row touched once), for the per-op breakdown of `v4rt bench step`.
// Declared without CUDA headers so host-only code can use it; defined only in CUDA builds.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace v4rt::kernels::cuda {

struct OpStat {
  int64_t calls = 0;
  double ms = 0;           // summed event time
  double bytes = 0;        // ideal bytes moved
  double flops = 0;
  double peak_flops = 0;   // the peak the op's FLOPs are held against (790e12 bf16, 1580e12 FP8)
};

class ProfilingBackend;

// Wraps `inner` (a CUDA backend). Timing is off until set_enabled(true).
std::unique_ptr<ProfilingBackend> make_profiling_backend(Backend& inner);

class ProfilingBackend : public Backend {
 public:
  virtual void set_enabled(bool on) = 0;
  virtual void reset() = 0;
  // Per op family ("linear fp8 1024x4096", "sparse_attention", ...), after synchronizing.
  virtual std::map<std::string, OpStat> stats() = 0;
};

struct DeviceInfo {
  std::string name;
  int sms = 0;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
};
DeviceInfo device_info();  // the current device

}  // namespace v4rt::kernels::cuda
