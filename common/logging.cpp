// SPDX-License-Identifier: MIT
#include "common/logging.h"

#include <glog/logging.h>

namespace v4rt {

void init_logging(const char* argv0, const LoggingOptions& options) {
  static bool initialised = false;
  if (initialised) return;
  initialised = true;
  if (!options.log_dir.empty()) {
    FLAGS_log_dir = options.log_dir;
    FLAGS_logtostderr = false;
    FLAGS_alsologtostderr = false;
    // Console: INFO from rank 0 (or every rank when asked), WARNING and above from all ranks.
    FLAGS_stderrthreshold = (options.rank == 0 || options.console_all) ? google::GLOG_INFO : google::GLOG_WARNING;
  } else {
    FLAGS_logtostderr = true;
    FLAGS_minloglevel = (options.rank == 0 || options.console_all) ? google::GLOG_INFO : google::GLOG_WARNING;
  }
  FLAGS_colorlogtostderr = false;
  google::InitGoogleLogging(argv0);
  if (!options.log_dir.empty() && options.world > 1) {
    char ext[32];
    snprintf(ext, sizeof ext, ".rank%02d", options.rank);
    google::SetLogFilenameExtension(ext);
  }
}

}  // namespace v4rt
