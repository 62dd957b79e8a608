// SPDX-License-Identifier: MIT
// Tensor-parallel partial-sum reduction (see tp.h).
#include "parallel/tp.h"

namespace v4rt::parallel {

void tp_reduce_sum(cluster::Comm& tp, float* data, int64_t count) {
  if (tp.size() == 1 || count == 0) return;
  tp.all_reduce(data, data, count, DType::kF32, cluster::ReduceOp::kSum);
  tp.synchronize();
}

}  // namespace v4rt::parallel
