// SPDX-License-Identifier: MIT
// OpScope: a per-thread stack of scope names.
#include "common/op_scope.h"

#include <vector>

namespace v4rt {

namespace {
thread_local std::vector<std::string> t_scopes;
}  // namespace

OpScope::OpScope(std::string name) { t_scopes.push_back(std::move(name)); }

OpScope::~OpScope() { t_scopes.pop_back(); }

std::string current_op_scope() {
  std::string out;
  for (const std::string& s : t_scopes) {
    if (!out.empty()) out += '/';
    out += s;
  }
  return out;
}

}  // namespace v4rt
