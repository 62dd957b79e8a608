// SPDX-License-Identifier: MIT
// Layout validation against the model's dimensions, and per-rank shard plans (see layout.h).
#include "parallel/layout.h"

#include <glog/logging.h>

#include <sstream>
#include <string>
#include <vector>

#include "common/check.h"

namespace v4rt::parallel {

std::vector<std::string> layout_violations(const Layout& layout, const ModelDims& dims) {
  std::vector<std::string> errors;
  auto fail = [&](const std::string& msg) { errors.push_back(msg); };
  auto str = [](auto v) { return std::to_string(v); };
  const struct { const char* key; int value; } sizes[] = {
      {"tp", layout.tp}, {"sp", layout.sp}, {"ep", layout.ep}, {"dp", layout.dp},
      {"sp_block", layout.sp_block}};
  for (const auto& s : sizes) {
    if (s.value < 1) fail("parallel." + std::string(s.key) + " = " + str(s.value) + " must be >= 1");
  }
  if (!errors.empty()) return errors;  // the divisibility rules below need sizes >= 1

  if (layout.world() != dims.world_size) {
    fail("world size " + str(dims.world_size) + " != dp*sp*tp = " + str(layout.world()) +
         " (parallel.dp = " + str(layout.dp) + ", sp = " + str(layout.sp) + ", tp = " +
         str(layout.tp) + ")");
  }
  auto divides = [&](const char* key, int value, const char* what, int64_t total) {
    if (total % value != 0) {
      fail("parallel." + std::string(key) + " = " + str(value) + " does not divide " + what + " " +
           str(total));
    }
  };
  const int tp = layout.tp;
  divides("tp", tp, "num_attention_heads", dims.num_heads);
  divides("tp", tp, "o_groups", dims.o_groups);
  divides("tp", tp, "index_n_heads", dims.index_n_heads);
  divides("ep", layout.ep, "n_routed_experts", dims.n_routed_experts);
  divides("ep", layout.ep, "the world size", dims.world_size);
  // FP8 weights are scaled per quant_block x quant_block tile: a TP slice must hold whole tiles.
  const int qb = dims.quant_block;
  if (qb > 0 && dims.num_heads % tp == 0 && (int64_t(dims.num_heads / tp) * dims.head_dim) % qb) {
    fail("parallel.tp = " + str(tp) + " splits attn.wq_b rows (num_attention_heads/tp * head_dim = " +
         str(int64_t(dims.num_heads / tp) * dims.head_dim) + ") inside a " + str(qb) +
         "-row FP8 block");
  }
  if (qb > 0 && dims.o_groups % tp == 0 && (int64_t(dims.o_groups / tp) * dims.o_lora_rank) % qb) {
    fail("parallel.tp = " + str(tp) + " splits attn.wo_b columns (o_groups/tp * o_lora_rank = " +
         str(int64_t(dims.o_groups / tp) * dims.o_lora_rank) + ") inside a " + str(qb) +
         "-column FP8 block");
  }
  if (qb > 0 && dims.index_n_heads % tp == 0 &&
      (int64_t(dims.index_n_heads / tp) * dims.index_head_dim) % qb) {
    fail("parallel.tp = " + str(tp) + " splits indexer.wq_b rows (index_n_heads/tp * index_head_dim = " +
         str(int64_t(dims.index_n_heads / tp) * dims.index_head_dim) + ") inside a " + str(qb) +
         "-row FP8 block");
  }
  return errors;
}

void validate(const Layout& layout, const ModelDims& dims) {
  const std::vector<std::string> errors = layout_violations(layout, dims);
  if (errors.empty()) return;
  std::ostringstream os;
  if (!layout.source.empty()) os << layout.source << ": ";
  os << "parallel layout tp=" << layout.tp << " sp=" << layout.sp << " ep=" << layout.ep << " dp=" << layout.dp
     << " is invalid: ";
  for (size_t i = 0; i < errors.size(); ++i) os << (i ? "; " : "") << errors[i];
  V4RT_FAIL(os.str());
}

ShardPlan make_shard_plan(const Layout& layout, const ModelDims& dims, int world_rank) {
  CHECK_EQ(layout.world(), dims.world_size) << "make_shard_plan needs a validated layout";
  ShardPlan plan;
  plan.world_rank = world_rank;
  plan.coords = cluster::group_coords(world_rank, group_shape(layout));
  const int tp = layout.tp, t = plan.coords.tp_idx;
  auto slice = [&](int64_t total, int parts, int idx) {
    const int64_t per = total / parts;
    return Range{idx * per, (idx + 1) * per};
  };
  plan.heads = slice(dims.num_heads, tp, t);
  plan.wq_b_rows = Range{plan.heads.begin * dims.head_dim, plan.heads.end * dims.head_dim};
  plan.o_groups = slice(dims.o_groups, tp, t);
  plan.wo_a_rows = Range{plan.o_groups.begin * dims.o_lora_rank, plan.o_groups.end * dims.o_lora_rank};
  plan.wo_b_cols = plan.wo_a_rows;
  plan.index_heads = slice(dims.index_n_heads, tp, t);
  plan.index_wq_b_rows = Range{plan.index_heads.begin * dims.index_head_dim,
                               plan.index_heads.end * dims.index_head_dim};
  plan.experts = slice(dims.n_routed_experts, layout.ep, plan.coords.ep_idx);
  plan.sp_size = layout.sp;
  plan.sp_idx = plan.coords.sp_idx;
  plan.sp_block = layout.sp_block;
  return plan;
}

}  // namespace v4rt::parallel
