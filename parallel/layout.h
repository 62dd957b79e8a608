// SPDX-License-Identifier: MIT
// The parallel layout of a job: world = dp x sp x tp ranks for attention; routed experts spread
// over an EP group of `ep` ranks. Parsed from the `parallel:` section of the runtime YAML by
// model/runtime_config; validated here against the model's dimensions.
#pragma once

namespace v4rt::parallel {

struct Layout {
  int tp = 1;  // tensor parallel: query heads, wq_b, wo_a groups, indexer heads; wo_b row-split
  int sp = 1;  // sequence parallel: compressed KV (CSA/HCA entries, indexer keys) by blocks
  int ep = 1;  // expert parallel: routed experts over the EP group
  int dp = 1;  // data parallel: independent replicas
  int world() const { return dp * sp * tp; }
};

}  // namespace v4rt::parallel
