// SPDX-License-Identifier: MIT
// OpScope: where the model is while it issues backend ops ("layer 3/attention"), for diagnostics
// only. The model opens a scope around each part of a step; the debug backend
// (kernels/debug_backend.h) names the scope of the first non-finite output and of every dumped
// tensor, and the CUDA backend adds it to the context of a failed status check. One stack per
// thread, so ranks run as threads keep their own.
#pragma once

#include <string>

namespace v4rt {

class OpScope {
 public:
  explicit OpScope(std::string name);  // opens `name` inside the current scope
  ~OpScope();                          // closes it
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
};

// The open scopes of this thread joined by '/', outermost first; "" outside every scope.
std::string current_op_scope();

}  // namespace v4rt
