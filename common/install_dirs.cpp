// SPDX-License-Identifier: MIT
// Data folders of an installed or build-tree binary (see install_dirs.h).
#include "common/install_dirs.h"

#include <filesystem>
#include <system_error>

// Set by common/CMakeLists.txt: the path from the install bindir to <datadir>/v4rt, and the
// source tree of this build.
#ifndef V4RT_BIN_TO_DATA
#define V4RT_BIN_TO_DATA "../share/v4rt"
#endif
#ifndef V4RT_SOURCE_TREE
#define V4RT_SOURCE_TREE ""
#endif

namespace v4rt {

namespace fs = std::filesystem;

std::string executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec || exe.empty()) return "";
  return exe.parent_path().string();
}

std::string installed_data_dir() {
  const std::string dir = executable_dir();
  if (dir.empty()) return "";
  return (fs::path(dir) / V4RT_BIN_TO_DATA).lexically_normal().string();
}

std::string find_data_path(const std::string& relative, const std::string& source_relative,
                           std::vector<std::string>* tried) {
  std::vector<std::string> candidates;
  if (const std::string data = installed_data_dir(); !data.empty())
    candidates.push_back((fs::path(data) / relative).lexically_normal().string());
  if (const std::string src = V4RT_SOURCE_TREE; !src.empty())
    candidates.push_back((fs::path(src) / source_relative).lexically_normal().string());
  for (const std::string& c : candidates) {
    if (tried) tried->push_back(c);
    std::error_code ec;
    if (fs::exists(c, ec)) return c;
  }
  return "";
}

}  // namespace v4rt
