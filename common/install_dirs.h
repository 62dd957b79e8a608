// SPDX-License-Identifier: MIT
// Where an installed or moved v4rt finds its data files (hardware tables, runtime configs, the
// tokenizer). `cmake --install` puts the binary in <prefix>/bin and the data in
// <prefix>/share/v4rt (configs/, tokenizer/); the binary finds that folder relative to its own
// location, so the install prefix can be moved as a whole. A binary that runs from its build tree
// falls back to the source tree it was built from.
#pragma once

#include <string>
#include <vector>

namespace v4rt {

// Folder holding the running executable (from /proc/self/exe); empty when it cannot be read.
std::string executable_dir();

// <executable_dir>/<relative path from bindir to datadir>/v4rt, e.g. /opt/v4rt/bin/../share/v4rt.
// Empty when executable_dir() is.
std::string installed_data_dir();

// The first of `<installed_data_dir>/<relative>` and `<source tree>/<source_relative>` that
// exists; the returned list `tried` (may be nullptr) names every place looked at, for errors.
// Empty when none exists.
std::string find_data_path(const std::string& relative, const std::string& source_relative,
                           std::vector<std::string>* tried = nullptr);

}  // namespace v4rt
