// SPDX-License-Identifier: MIT
// Tensor-parallel partial-sum reduction (see tp.h).
#include "parallel/tp.h"

#include <glog/logging.h>

namespace v4rt::parallel {

void tp_reduce_sum(cluster::Comm& tp, float* data, int64_t count) {
  if (tp.size() == 1 || count == 0) return;
  // Stream-ordered on device Comms: the next op on the backend's stream sees the sum.
  tp.all_reduce(data, data, count, DType::kF32, cluster::ReduceOp::kSum);
}

void tp_reduce_sum(cluster::Comm& tp, const TensorView& v) {
  CHECK(v.contiguous() && v.dtype == DType::kF32) << "TP reduce needs a contiguous F32 view " << v.shape_str();
  CHECK(v.device == tp.device()) << "TP reduce: the view is on " << (v.device == Device::kHost ? "host" : "device")
                                 << " memory but group '" << tp.name() << "' reduces on "
                                 << (tp.device() == Device::kHost ? "host" : "device")
                                 << " memory (build the groups with cluster::make_groups for the backend)";
  tp_reduce_sum(tp, static_cast<float*>(v.data), v.numel());
}

}  // namespace v4rt::parallel
