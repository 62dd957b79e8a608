// SPDX-License-Identifier: MIT
// Per-rank log files: init_world with a log_dir must give every rank its own glog file whose name
// ends in ".rankNN" and holds that rank's lines. Exit code 0 = pass (checked on rank 0).
#include <glog/logging.h>
#include <mpi.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "cluster/world.h"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc < 2) {
    std::fprintf(stderr, "usage: world_logs LOG_DIR\n");
    return 2;
  }
  const fs::path dir = fs::path(argv[1]) / "world_logs.d";
  // MPI first, so rank 0 can clear old logs before any rank opens its file.
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  v4rt::cluster::WorldOptions options;
  options.log_dir = dir.string();
  const auto& world = v4rt::cluster::init_world(&argc, &argv, options);
  LOG(INFO) << "marker from rank " << world.rank;
  google::FlushLogFiles(google::GLOG_INFO);
  MPI_Barrier(MPI_COMM_WORLD);
  int failures = 0;
  if (world.rank == 0) {
    for (int r = 0; r < world.size; ++r) {
      char ext[16];
      std::snprintf(ext, sizeof ext, ".rank%02d", r);
      const std::string marker = "marker from rank " + std::to_string(r);
      bool found = false;
      for (const auto& entry : fs::directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        if (entry.is_symlink() || name.find(".INFO.") == std::string::npos) continue;
        if (name.size() < 7 || name.compare(name.size() - 7, 7, ext) != 0) continue;
        std::ifstream in(entry.path());
        std::stringstream text;
        text << in.rdbuf();
        if (text.str().find(marker) != std::string::npos) found = true;
      }
      if (!found) {
        std::fprintf(stderr, "FAIL: no INFO log file ending in %s with '%s' in %s\n", ext,
                     marker.c_str(), dir.c_str());
        ++failures;
      }
    }
    if (failures == 0) std::printf("PASS: %d per-rank log files\n", world.size);
  }
  MPI_Bcast(&failures, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}
