// SPDX-License-Identifier: MIT
// DebugBackend: the `debug:` switches of the runtime YAML that act on backend ops, for any backend
// (CPU or CUDA), as a decorator around it:
//  - sync_each_op: synchronize after every op, so an asynchronous device fault surfaces at the op
//    that caused it (its scope and op name are in the failure's context, common/op_scope.h);
//  - check_finite: read back every op's outputs and throw v4rt::Error at the first NaN/inf, naming
//    the model scope (layer and sublayer, from OpScope), the op, the output and the element;
//  - dump_dir: write every op's outputs as .npy files (float32 or int32), named by a running
//    number, the scope and the op, plus index.tsv listing them.
// Outputs that hold -inf by contract (indexer scores of masked keys, top-k values of padding,
// log-sum-exp of empty SP partials) may be -inf under check_finite; NaN and +inf still fail.
// Data movement (copies, fills, uploads) is synchronized but neither checked nor dumped.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace v4rt::kernels {

struct DebugOptions {
  bool sync_each_op = false;
  bool check_finite = false;
  std::string dump_dir;  // empty: no dumps
  bool any() const { return sync_each_op || check_finite || !dump_dir.empty(); }
};

// Wraps (and owns) `inner`. Creates dump_dir when set; throws v4rt::Error naming it when it cannot.
std::unique_ptr<Backend> make_debug_backend(std::unique_ptr<Backend> inner, const DebugOptions& options);

}  // namespace v4rt::kernels
