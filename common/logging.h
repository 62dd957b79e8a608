// SPDX-License-Identifier: MIT
// glog set-up shared by every binary. Single-process tools call init_logging(argv0) and log to
// stderr; cluster::init_logging layers per-rank files and the rank tag on top of this.
#pragma once

#include <string>

namespace v4rt {

struct LoggingOptions {
  int rank = 0;
  int world = 1;
  std::string log_dir;     // empty: stderr only
  bool console_all = false;  // INFO on the console from every rank (default: rank 0 only)
};

void init_logging(const char* argv0, const LoggingOptions& options = {});

}  // namespace v4rt
