// SPDX-License-Identifier: MIT
// Weight-load progress lines (see load_progress.h).
#include "launch/load_progress.h"

#include <algorithm>
#include <cstdio>

namespace v4rt::launch {
namespace {

std::string duration(double s) {
  char buf[32];
  if (s < 90) {
    std::snprintf(buf, sizeof(buf), "%.0f s", s);
  } else if (s < 5400) {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", int(s) / 60, int(s) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", int(s) / 3600, int(s) / 60 % 60);
  }
  return buf;
}

double gb(double bytes) { return bytes / 1e9; }

}  // namespace

std::string format_load_progress(const model::LoadProgress& p, std::span<const RankLoad> ranks) {
  // The job is as far as its slowest rank: the ETA and the rate come from it.
  int slowest = 0;
  for (size_t r = 1; r < ranks.size(); ++r)
    if (ranks[r].elapsed_s > ranks[size_t(slowest)].elapsed_s) slowest = int(r);
  const double elapsed = ranks.empty() ? p.elapsed_s : ranks[size_t(slowest)].elapsed_s;
  double total_bytes = 0, unit_bytes = 0;
  for (const RankLoad& r : ranks) {
    total_bytes += r.bytes;
    unit_bytes += r.unit_bytes;
  }
  if (ranks.empty()) {
    total_bytes = double(p.bytes);
    unit_bytes = double(p.unit_bytes);
  }
  const double rate = elapsed > 0 ? gb(total_bytes) / elapsed : 0;
  char buf[512];
  std::snprintf(buf, sizeof(buf), "load [%d/%d] %s (%s): %.2f GB, %.2f GB in %.1f s = %.2f GB/s, %.0f%% of the checkpoint",
                p.unit_index, p.num_units, p.unit.c_str(), p.shards.empty() ? "no tensors" : p.shards.c_str(),
                gb(unit_bytes), gb(total_bytes), elapsed, rate,
                100 * p.done_fraction);
  std::string line = buf;
  if (p.unit_index < p.num_units && p.done_fraction > 0)
    line += ", ETA " + duration(elapsed * (1 - p.done_fraction) / p.done_fraction);
  if (ranks.size() > 1) {
    const RankLoad& s = ranks[size_t(slowest)];
    double fastest = s.elapsed_s;
    for (const RankLoad& r : ranks) fastest = std::min(fastest, r.elapsed_s);
    std::snprintf(buf, sizeof(buf), "; slowest rank %d (%.2f GB/s, %.1f s behind the fastest)", slowest,
                  s.elapsed_s > 0 ? gb(s.bytes) / s.elapsed_s : 0.0, s.elapsed_s - fastest);
    line += buf;
  }
  return line;
}

model::LoadObserver load_progress_reporter(cluster::Comm* comm, std::function<void(const std::string&)> sink) {
  static_assert(sizeof(RankLoad) == 3 * sizeof(double), "RankLoad is all-gathered as three doubles");
  return [comm, sink = std::move(sink)](const model::LoadProgress& p) {
    std::vector<RankLoad> ranks;
    bool print = true;
    if (comm && comm->size() > 1) {
      const RankLoad mine{p.elapsed_s, double(p.bytes), double(p.unit_bytes)};
      ranks.resize(size_t(comm->size()));
      comm->all_gather(&mine, ranks.data(), 3, DType::kF64);
      comm->synchronize();
      print = comm->rank() == 0;
    }
    if (print) sink(format_load_progress(p, ranks));
  };
}

}  // namespace v4rt::launch
