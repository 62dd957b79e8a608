// SPDX-License-Identifier: MIT
// Progress bar, log lines and the end-of-job summary.
#include "launch/batch/progress.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace v4rt::launch::batch {

namespace {

constexpr int kBarWidth = 24;

std::string fixed(double v, int digits) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << v;
  return os.str();
}

}  // namespace

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = int64_t(std::llround(s));
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(t / 3600), (long long)(t % 3600 / 60));
  } else if (t >= 60) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(t / 60), (long long)(t % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%llds", (long long)t);
  }
  return buf;
}

Progress::Progress(int64_t total, int64_t already_done, const ProgressOptions& options, std::FILE* out)
    : total_(total), already_done_(already_done), options_(options), out_(out) {}

double Progress::elapsed_s() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void Progress::on_done(int64_t prompt_tokens, int64_t completion_tokens, double latency_s, bool ok) {
  ++done_now_;
  (ok ? ok_now_ : errors_now_) += 1;
  prompt_tokens_ += prompt_tokens;
  completion_tokens_ += completion_tokens;
  if (latency_s >= 0) latencies_s_.push_back(latency_s);
}

double Progress::latency_percentile(double q) const {
  if (latencies_s_.empty()) return 0;
  std::vector<double> v = latencies_s_;
  std::sort(v.begin(), v.end());
  const size_t rank = size_t(std::ceil(q * double(v.size())));
  return v[std::min(v.size() - 1, rank > 0 ? rank - 1 : 0)];
}

std::string Progress::status_line() const {
  const double t = std::max(elapsed_s(), 1e-9);
  const int64_t done_all = done();
  const double frac = total_ > 0 ? double(done_all) / double(total_) : 1.0;
  const int64_t left = total_ - done_all;
  const double eta = done_now_ > 0 ? double(left) * t / double(done_now_) : NAN;
  std::ostringstream os;
  if (options_.terminal) {
    const int fill = int(frac * kBarWidth);
    os << '[' << std::string(size_t(fill), '#') << std::string(size_t(kBarWidth - fill), '.') << "] ";
  }
  os << done_all << "/" << total_ << " (" << fixed(100.0 * frac, 1) << "%)";
  if (errors_now_) os << ", " << errors_now_ << " errors";
  os << " | in " << fixed(double(prompt_tokens_) / t, 1) << " tok/s | out " << fixed(double(completion_tokens_) / t, 1)
     << " tok/s | " << fixed(double(done_now_) / t, 2) << " req/s";
  if (mtp_depth_ > 0)
    os << " | mtp accept " << fixed(spec_.acceptance_rate(), 3) << ", " << fixed(spec_.tokens_per_step(), 2) << " tok/verify";
  os << " | ETA " << (left == 0 ? "0s" : format_duration(eta));
  return os.str();
}

void Progress::tick(bool force) {
  const Clock::time_point now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (options_.terminal) {
    if (!force && since < options_.bar_interval_s) return;
    std::fprintf(out_, "\r%s\033[K", status_line().c_str());
    std::fflush(out_);
    drew_ = true;
  } else {
    if (!force && since < options_.log_interval_s) return;
    if (last_draw_ == Clock::time_point{} && !force) {  // the first interval starts now
      last_draw_ = now;
      return;
    }
    LOG(INFO) << "batch: " << status_line();
  }
  last_draw_ = now;
}

void Progress::close() {
  if (options_.terminal && drew_) {
    std::fprintf(out_, "\n");
    std::fflush(out_);
    drew_ = false;
  }
}

std::string Progress::summary() const {
  const double t = std::max(elapsed_s(), 1e-9);
  std::ostringstream os;
  os << "batch summary: " << done() << "/" << total_ << " requests done";
  if (already_done_) os << " (" << already_done_ << " from earlier runs, " << done_now_ << " in this run)";
  os << "\n  this run: " << ok_now_ << " ok, " << errors_now_ << " errors in " << fixed(t, 2) << " s ("
     << fixed(double(done_now_) / t, 2) << " req/s)\n"
     << "  tokens: " << prompt_tokens_ << " in (" << fixed(double(prompt_tokens_) / t, 1) << " tok/s), "
     << completion_tokens_ << " out (" << fixed(double(completion_tokens_) / t, 1) << " tok/s)\n"
     << "  latency (submit -> last token, " << latencies_s_.size() << " requests): p50 "
     << fixed(latency_percentile(0.50), 3) << " s, p90 " << fixed(latency_percentile(0.90), 3) << " s, p99 "
     << fixed(latency_percentile(0.99), 3) << " s\n";
  if (mtp_depth_ > 0) {
    os << "  speculative decoding (MTP, " << mtp_depth_ << " drafts per step): acceptance rate "
       << fixed(spec_.acceptance_rate(), 3) << " (" << spec_.accepted << " of " << spec_.drafted << " drafts), "
       << fixed(spec_.tokens_per_step(), 2) << " tokens per verify step (" << spec_.steps
       << " sequence verify steps); draft " << fixed(spec_.draft_s, 2) << " s, verify " << fixed(spec_.verify_s, 2)
       << " s\n";
  }
  return os.str();
}

}  // namespace v4rt::launch::batch
