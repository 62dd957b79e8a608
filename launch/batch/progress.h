// SPDX-License-Identifier: MIT
// Progress of a batch job on rank 0: a one-line bar redrawn in place on a terminal (requests
// done/total, tokens/s in and out, ETA), periodic plain log lines otherwise, and the summary at
// the end (totals, throughput, latency percentiles). Counts requests finished by this run apart
// from those a previous run had already committed. With speculative decoding (--mtp) both also
// show the acceptance rate of the drafts and the tokens decided per verify step.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "model/speculative.h"

namespace v4rt::launch::batch {

struct ProgressOptions {
  bool terminal = false;          // redraw a bar (stderr is a tty) instead of log lines
  double bar_interval_s = 0.25;
  double log_interval_s = 10.0;
};

class Progress {
 public:
  using Clock = std::chrono::steady_clock;
  Progress(int64_t total, int64_t already_done, const ProgressOptions& options, std::FILE* out = stderr);

  // One request committed by this run; latency_s < 0 for error lines (no generation).
  void on_done(int64_t prompt_tokens, int64_t completion_tokens, double latency_s, bool ok);
  // Speculative decoding with `depth` drafts per verify step; set_speculative() gives the totals.
  void enable_speculative(int depth) { mtp_depth_ = depth; }
  void set_speculative(const model::SpeculativeStats& stats) { spec_ = stats; }
  // Redraws / logs when its interval has passed (or always with force).
  void tick(bool force = false);
  // Ends the bar line (terminal) so later output starts on a new line.
  void close();

  std::string status_line() const;
  std::string summary() const;

  int64_t done() const { return already_done_ + done_now_; }
  int64_t total() const { return total_; }
  // Exact percentile (nearest rank) of this run's request latencies; 0 when none.
  double latency_percentile(double q) const;

 private:
  double elapsed_s() const;

  int64_t total_, already_done_;
  ProgressOptions options_;
  std::FILE* out_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_draw_ = Clock::time_point{};
  int64_t done_now_ = 0, ok_now_ = 0, errors_now_ = 0;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  std::vector<double> latencies_s_;
  bool drew_ = false;
  int mtp_depth_ = 0;
  model::SpeculativeStats spec_;
};

// "1h02m", "3m07s", "12s".
std::string format_duration(double seconds);

}  // namespace v4rt::launch::batch
