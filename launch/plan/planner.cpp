// SPDX-License-Identifier: MIT
// Layout validation and enumeration, and the per-GPU cost model of a decode step and a prefill.
// Ranks are ordered tp innermost, then sp, then dp (DESIGN.md), so a TP group is inside a node, an
// SP group is inside a node while tp*sp <= GPUs per node, and the EP group [0, ep) is inside a node
// while ep <= GPUs per node; a group that crosses nodes is costed on the inter-node links.
#include "launch/plan/planner.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "common/check.h"

namespace v4rt::launch::plan {
namespace {

constexpr double kGiB = double(1ull << 30);

struct Link {
  double bytes_per_s = 0;
  double latency_s = 0;
};

Link group_link(const GpuSpec& gpu, const Calibration& calib, bool inside_node) {
  Link l;
  l.bytes_per_s = (inside_node ? gpu.nvlink_bytes_per_s : gpu.internode_bytes_per_s) *
                  calib.link_fraction;
  l.latency_s = calib.collective_latency_s > 0
                    ? calib.collective_latency_s
                    : (inside_node ? gpu.nvlink_latency_s : gpu.internode_latency_s);
  return l;
}

// Ring all-reduce of `bytes` over n ranks: 2(n-1)/n x bytes cross each GPU's link.
double all_reduce_s(double bytes, int n, const Link& l) {
  if (n <= 1) return 0;
  return 2.0 * (n - 1) / n * bytes / l.bytes_per_s + l.latency_s;
}

// All-gather where every rank contributes `bytes`: (n-1) x bytes arrive at each GPU.
double all_gather_s(double bytes, int n, const Link& l) {
  if (n <= 1) return 0;
  return double(n - 1) * bytes / l.bytes_per_s + l.latency_s;
}

// One all-to-all where each GPU sends `bytes` spread evenly over the ep ranks of its group.
double all_to_all_s(double bytes, int ep, const Cluster& cluster, const GpuSpec& gpu,
                    const Calibration& calib) {
  if (ep <= 1) return 0;
  const int g = cluster.gpus_per_node;
  const Link nv = group_link(gpu, calib, true), net = group_link(gpu, calib, ep <= g);
  if (calib.all_to_all_bytes_per_s > 0)
    return bytes * (ep - 1) / ep / calib.all_to_all_bytes_per_s + net.latency_s;
  if (ep <= g) return bytes * (ep - 1) / ep / nv.bytes_per_s + nv.latency_s;
  const double intra = bytes * (g - 1) / ep, inter = bytes * (ep - g) / ep;
  return std::max(intra / nv.bytes_per_s, inter / net.bytes_per_s) + net.latency_s;
}

int count_layers(const model::ModelConfig& c, int ratio) {
  int n = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) n += c.compress_ratio(l) == ratio;
  return n;
}

double expert_flops_peak(const GpuSpec& gpu) { return gpu.fp4_flops > 0 ? gpu.fp4_flops : gpu.fp8_flops; }

// Reduce-scatter of `bytes` over n ranks: (n-1)/n x bytes cross each GPU's link.
double reduce_scatter_s(double bytes, int n, const Link& l) {
  if (n <= 1) return 0;
  return double(n - 1) / n * bytes / l.bytes_per_s + l.latency_s;
}

// Communication of one batch of `tokens` query tokens per replica through every layer. In decode
// every SP rank needs the merged attention output (all-reduce); in prefill the prompt's tokens are
// split over the SP ranks, so each rank only receives its own tokens' outputs (reduce-scatter).
void add_comm(StepTime& t, const model::ModelConfig& c, const GpuSpec& gpu, const Calibration& calib,
              const Cluster& cluster, const parallel::Layout& lay, double tokens, double ep_tokens,
              bool prefill) {
  const int g = cluster.gpus_per_node;
  const int layers = c.num_hidden_layers;
  const int csa = count_layers(c, 4), compressed = layers - count_layers(c, 0);
  const double d = double(c.hidden_size);
  // TP: all-reduce of the bf16 attention output [tokens, D] after wo_b, every layer.
  const Link tp_link = group_link(gpu, calib, lay.tp <= g);
  t.tp += layers * all_reduce_s(tokens * d * 2, lay.tp, tp_link);
  // EP: FP8 dispatch (e4m3 + one e8m0 scale per 128) and bf16 combine of top-k copies per token.
  if (lay.ep > 1) {
    const double copies = ep_tokens * c.num_experts_per_tok;
    t.ep += layers * (all_to_all_s(copies * (d + d / 128), lay.ep, cluster, gpu, calib) +
                      all_to_all_s(copies * d * 2, lay.ep, cluster, gpu, calib));
  }
  // SP: CSA layers exchange local top-k candidates (f32 score + i32 index); every compressed layer
  // merges partial attention outputs (bf16 [heads/tp, head_dim] + f32 log-sum-exp per head).
  if (lay.sp > 1) {
    const Link sp_link = group_link(gpu, calib, lay.tp * lay.sp <= g);
    const double topk_bytes = tokens * c.index_topk * 8.0 / lay.sp;
    const double merge_bytes = tokens * double(c.num_attention_heads) / lay.tp * (c.head_dim * 2.0 + 4);
    t.sp += csa * all_gather_s(topk_bytes, lay.sp, sp_link);
    t.sp += compressed * (prefill ? reduce_scatter_s(merge_bytes, lay.sp, sp_link)
                                  : all_reduce_s(merge_bytes, lay.sp, sp_link));
  }
}

}  // namespace

double cpu_share(const GpuSpec& gpu, const Cluster& cluster) {
  if (gpu.shared_cores <= 0) return 1.0;
  return std::max(1.0, double(cluster.gpus_per_node) / gpu.shared_cores);
}

double StepTime::total() const {
  return (kernels > 0 ? kernels : std::max(compute, memory)) + tp + ep + sp + launch;
}

const char* batching_name(Batching batching) {
  return batching == Batching::kBatched ? "batched" : "sequential";
}

std::optional<Batching> parse_batching(const std::string& name) {
  if (name == "batched") return Batching::kBatched;
  if (name == "sequential") return Batching::kSequential;
  return std::nullopt;
}

std::vector<std::string> layout_problems(const model::ModelConfig& c, const parallel::Layout& lay,
                                         const Cluster& cluster) {
  std::vector<std::string> why;
  auto say = [&](auto&&... parts) {
    std::ostringstream os;
    (os << ... << parts);
    why.push_back(os.str());
  };
  if (lay.tp < 1 || lay.sp < 1 || lay.ep < 1 || lay.dp < 1) {
    say("tp, sp, ep, dp must all be >= 1");
    return why;
  }
  const int world = cluster.world();
  if (lay.world() != world)
    say("world ", world, " != dp*sp*tp = ", lay.dp, "*", lay.sp, "*", lay.tp, " = ", lay.world());
  if (c.num_attention_heads % lay.tp) say("num_attention_heads ", c.num_attention_heads, " % tp ", lay.tp, " != 0");
  if (c.o_groups % lay.tp) say("o_groups ", c.o_groups, " % tp ", lay.tp, " != 0 (wo_a groups split over TP)");
  if (c.index_n_heads % lay.tp) say("index_n_heads ", c.index_n_heads, " % tp ", lay.tp, " != 0");
  const int block = cluster.fp8_block_tiles ? c.quant.weight_block_size[0] : 0;
  if (block > 0 && (int64_t(c.o_groups) * c.o_lora_rank / lay.tp) % block)
    say("wo_b row split o_groups*o_lora_rank/tp = ", int64_t(c.o_groups) * c.o_lora_rank / lay.tp,
        " is not a multiple of the FP8 block ", block);
  if (c.n_routed_experts % lay.ep) say("n_routed_experts ", c.n_routed_experts, " % ep ", lay.ep, " != 0");
  if (world % lay.ep) say("world ", world, " % ep ", lay.ep, " != 0 (EP groups must tile the world)");
  if (lay.tp > cluster.gpus_per_node)
    say("tp ", lay.tp, " > ", cluster.gpus_per_node, " GPUs per node (a TP group stays inside a node)");
  else if (cluster.gpus_per_node % lay.tp)
    say("GPUs per node ", cluster.gpus_per_node, " % tp ", lay.tp, " != 0 (a TP group would straddle nodes)");
  if (why.empty()) {
    // The runtime's own check (parallel::validate) has the last word: what it refuses to load is
    // not a plan either (e.g. a TP slice of wq_b rows inside an FP8 block).
    parallel::ModelDims dims;
    dims.num_heads = c.num_attention_heads;
    dims.head_dim = c.head_dim;
    dims.o_groups = c.o_groups;
    dims.o_lora_rank = c.o_lora_rank;
    dims.index_n_heads = c.index_n_heads;
    dims.index_head_dim = c.index_head_dim;
    dims.n_routed_experts = c.n_routed_experts;
    dims.q_lora_rank = c.q_lora_rank;
    dims.hidden = c.hidden_size;
    dims.quant_block = block;
    dims.world_size = world;
    try {
      parallel::validate(lay, dims);
    } catch (const Error& e) {
      std::istringstream lines(e.what());
      std::string line;
      while (std::getline(lines, line)) {
        const size_t text = line.find_first_not_of(' ');
        if (text != std::string::npos && line.rfind("invalid parallel layout", 0) != 0)
          why.push_back(line.substr(text));
      }
    }
  }
  return why;
}

std::vector<parallel::Layout> candidate_layouts(const Cluster& cluster) {
  const int world = cluster.world();
  std::vector<parallel::Layout> out;
  for (int tp = 1; tp <= world; ++tp) {
    if (world % tp) continue;
    for (int sp = 1; sp <= world / tp; ++sp) {
      if ((world / tp) % sp) continue;
      const int dp = world / tp / sp;
      std::set<int> eps = {world, std::min(world, cluster.gpus_per_node)};
      if (tp * sp > 1) eps.insert(tp * sp);
      for (auto it = eps.rbegin(); it != eps.rend(); ++it) out.push_back({tp, sp, *it, dp});
    }
  }
  return out;
}

StepTime decode_step_time(const model::ModelConfig& c, const GpuSpec& gpu, const Calibration& calib,
                          const Cluster& cluster, const parallel::Layout& lay, int64_t context,
                          int64_t batch, KvFormat format, Batching batching, bool head_on_leader) {
  StepTime t;
  const int world = lay.world();
  if (batching == Batching::kSequential && batch > lay.dp) {
    // Each replica runs its sequences one after another: b passes of one sequence each.
    const double passes = std::ceil(double(batch) / lay.dp);
    t = decode_step_time(c, gpu, calib, cluster, lay, context, lay.dp, format, Batching::kBatched,
                         head_on_leader);
    for (double* x : {&t.compute, &t.memory, &t.tp, &t.ep, &t.sp, &t.launch, &t.kernels}) *x *= passes;
    for (double& x : t.family_s) x *= passes;
    return t;
  }
  const double b_global = double(batch);
  const double b = std::ceil(b_global / lay.dp);  // sequences per replica
  const WeightBytes w = weight_bytes(c);
  const LinearMacs m = linear_macs(c);
  const AttentionFlops a = decode_attention_flops(c, context);
  const KvReadBytes kv = decode_kv_read_bytes(c, context, format);
  const int k = c.num_experts_per_tok;
  const double e = c.n_routed_experts;
  // Tokens routed inside one EP group and the experts they touch per layer (uniform routing).
  const double ep_group_tokens = b_global * lay.ep / world;
  const double experts_touched = e * (1.0 - std::pow(1.0 - k / e, ep_group_tokens));
  // HBM: every non-expert weight of the backbone (embed: only its rows), touched experts, KV.
  double bytes = double(w.main.replicated) + double(w.main.tp_sharded - w.embed) / lay.tp;
  const double head_bytes = double(c.vocab_size) * c.hidden_size * 2;
  if (head_on_leader) bytes += head_bytes * (1.0 - 1.0 / lay.tp);  // the leader reads all of it
  bytes += c.num_hidden_layers * experts_touched / lay.ep * double(w.expert_bytes);
  bytes += b * (kv.compressed / lay.sp + kv.window);
  t.memory = bytes / (gpu.hbm_bytes_per_s * calib.hbm_fraction);
  // FLOPs: replicated linears on every rank for the replica's tokens, TP-split linears, routed
  // experts spread over the world, indexer split over tp*sp, core attention over tp (window) and
  // tp*sp (compressed entries).
  const double fp8 = 2.0 * b * (m.replicated + m.shared_expert + m.tp_sharded / lay.tp +
                                m.head / (head_on_leader ? 1 : lay.tp)) +
                     b * a.indexer / (lay.tp * lay.sp);
  const double fp_expert = 2.0 * b_global * k * m.routed_expert / world;
  const double bf16 = b * (a.core_window / lay.tp + a.core_compressed / (lay.tp * lay.sp));
  t.compute = (fp8 / gpu.fp8_flops + fp_expert / expert_flops_peak(gpu) + bf16 / gpu.bf16_flops) /
              calib.flop_fraction;
  add_comm(t, c, gpu, calib, cluster, lay, b, b_global / world, /*prefill=*/false);
  // Logits: all-gather of the vocabulary-split head output (f32).
  if (!head_on_leader)
    t.tp += all_gather_s(b * double(c.vocab_size) / lay.tp * 4, lay.tp,
                         group_link(gpu, calib, lay.tp <= cluster.gpus_per_node));
  t.launch = c.num_hidden_layers * calib.launch_overhead_s_per_layer;
  if (calib.has_families()) {
    // Per-family model: kernels one after another, each with its fitted efficiency and launch
    // latency (the launch term is inside the family times).
    const StepOps ops = decode_step_ops(c, gpu, lay, context, b, b_global, format, head_on_leader);
    for (int i = 0; i < kNumOpFamilies; ++i) {
      t.family_s[size_t(i)] = family_time_s(ops[size_t(i)], gpu, calib.families[size_t(i)], calib);
      t.kernels += t.family_s[size_t(i)];
    }
    t.launch = 0;
  }
  // CPU ranks beyond the host's cores time-share them.
  const double share = cpu_share(gpu, cluster);
  for (double* x : {&t.compute, &t.memory, &t.launch, &t.kernels}) *x *= share;
  for (double& x : t.family_s) x *= share;
  return t;
}

StepTime prefill_time(const model::ModelConfig& c, const GpuSpec& gpu, const Calibration& calib,
                      const Cluster& cluster, const parallel::Layout& lay, int64_t length,
                      KvFormat format) {
  StepTime t;
  const int group = lay.tp * lay.sp;  // GPUs of one replica; all replicas prefill concurrently
  const WeightBytes w = weight_bytes(c);
  const LinearMacs m = linear_macs(c);
  const AttentionFlops a = prefill_attention_flops(c, length);
  const double s = double(length);
  const int64_t chunk = std::max<int64_t>(1, calib.prefill_chunk_tokens);
  const int64_t chunks = (length + chunk - 1) / chunk;
  // FLOPs: the prompt's tokens split over SP ranks, TP splits heads; the head runs for the last
  // token only; routed experts spread over the replica's share of the EP group.
  const double fp8 = 2.0 * s * (m.replicated + m.shared_expert) / lay.sp +
                     2.0 * s * m.tp_sharded / group + 2.0 * m.head / lay.tp + a.indexer / group;
  const double fp_expert = 2.0 * s * c.num_experts_per_tok * m.routed_expert / group;
  const double bf16 = a.core_window / group + a.core_compressed / group;
  t.compute = (fp8 / gpu.fp8_flops + fp_expert / expert_flops_peak(gpu) + bf16 / gpu.bf16_flops) /
              calib.flop_fraction;
  // HBM: all resident weights once per chunk, plus the indexer keys / entries scanned per chunk.
  double bytes = double(chunks) * w.per_gpu(lay.tp, lay.ep);
  for (int64_t i = 1; i <= chunks; ++i)
    bytes += double(kv_bytes(c, std::min(length, i * chunk), format).compressed) / lay.sp;
  t.memory = bytes / (gpu.hbm_bytes_per_s * calib.hbm_fraction);
  StepTime per_chunk;
  const double ctok = double(std::min(length, chunk));
  add_comm(per_chunk, c, gpu, calib, cluster, lay, ctok, ctok / group, /*prefill=*/true);
  t.tp = chunks * per_chunk.tp;
  t.ep = chunks * per_chunk.ep;
  t.sp = chunks * per_chunk.sp;
  t.launch = double(chunks) * c.num_hidden_layers * calib.launch_overhead_s_per_layer;
  return t;
}

Prediction predict(const model::ModelConfig& c, const GpuSpec& gpu, const Calibration& calib,
                   const PlanRequest& req, const parallel::Layout& lay) {
  Prediction p;
  p.layout = lay;
  const std::vector<std::string> why = layout_problems(c, lay, req.cluster);
  if (!why.empty()) {
    for (size_t i = 0; i < why.size(); ++i) p.rejected += (i ? "; " : "") + why[i];
    return p;
  }
  if (lay.tp * lay.sp > req.cluster.gpus_per_node) p.note = "SP group crosses nodes";
  p.weight_bytes_per_gpu = weight_bytes(c).per_gpu(lay.tp, lay.ep);
  p.kv = kv_bytes(c, req.context, req.kv_format);
  p.kv_bytes_per_seq_gpu = p.kv.per_gpu(lay.sp);
  const double budget = gpu.hbm_bytes - p.weight_bytes_per_gpu - calib.runtime_reserve_bytes;
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  if (budget < double(p.kv_bytes_per_seq_gpu)) {
    os << "does not fit: weights " << p.weight_bytes_per_gpu / kGiB << " GiB + reserve "
       << calib.runtime_reserve_bytes / kGiB << " GiB + one sequence "
       << p.kv_bytes_per_seq_gpu / kGiB << " GiB > " << gpu.hbm_bytes / kGiB << " GiB per GPU";
    p.rejected = os.str();
    return p;
  }
  const int64_t per_replica = int64_t(budget / double(p.kv_bytes_per_seq_gpu));
  p.max_seqs = per_replica * lay.dp;
  auto step = [&](int64_t batch) {
    return decode_step_time(c, gpu, calib, req.cluster, lay, req.context, batch, req.kv_format,
                            req.batching, req.head_on_leader);
  };
  if (req.batch > 0) {
    const int64_t b = (req.batch + lay.dp - 1) / lay.dp;
    if (b > per_replica) {
      os << "does not fit: " << b << " sequences of " << req.context << " tokens per replica need "
         << (p.weight_bytes_per_gpu + calib.runtime_reserve_bytes + double(b) * p.kv_bytes_per_seq_gpu) / kGiB
         << " GiB > " << gpu.hbm_bytes / kGiB << " GiB per GPU";
      p.rejected = os.str();
      return p;
    }
    p.batch = req.batch;
  } else if (req.latency_target_s > 0) {
    // The largest batch per replica that meets the target (the step time grows with the batch).
    int64_t lo = 1, hi = per_replica;
    if (step(lay.dp).total() > req.latency_target_s) {
      hi = 1;
    } else {
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (step(mid * lay.dp).total() <= req.latency_target_s) lo = mid;
        else hi = mid - 1;
      }
    }
    p.batch = lo * lay.dp;
  } else {
    p.batch = p.max_seqs;
  }
  p.decode = step(p.batch);
  p.tokens_per_s = double(p.batch) / p.decode.total();
  p.prefill = prefill_time(c, gpu, calib, req.cluster, lay, req.context, req.kv_format);
  if (req.latency_target_s > 0 && p.decode.total() > req.latency_target_s) {
    p.meets_latency = false;
    std::ostringstream ms;
    ms.setf(std::ios::fixed);
    ms.precision(1);
    ms << "misses latency target (" << p.decode.total() * 1e3 << " ms > "
       << req.latency_target_s * 1e3 << " ms)";
    p.note += (p.note.empty() ? "" : "; ") + ms.str();
  }
  return p;
}

Plan make_plan(const model::ModelConfig& c, const GpuSpec& gpu, const Calibration& calib,
               const PlanRequest& req, const std::optional<parallel::Layout>& layout) {
  Plan plan;
  const std::vector<parallel::Layout> layouts =
      layout ? std::vector<parallel::Layout>{*layout} : candidate_layouts(req.cluster);
  for (const parallel::Layout& lay : layouts) plan.rows.push_back(predict(c, gpu, calib, req, lay));
  std::stable_sort(plan.rows.begin(), plan.rows.end(), [](const Prediction& x, const Prediction& y) {
    if (x.rejected.empty() != y.rejected.empty()) return x.rejected.empty();
    return x.tokens_per_s > y.tokens_per_s;
  });
  for (size_t i = 0; i < plan.rows.size(); ++i) {
    const Prediction& p = plan.rows[i];
    if (p.rejected.empty() && p.meets_latency) {
      plan.best = int(i);
      break;
    }
  }
  return plan;
}

std::optional<parallel::Layout> tp_replicated_counterpart(const model::ModelConfig& c,
                                                          const parallel::Layout& lay,
                                                          const Cluster& cluster) {
  const parallel::Layout rep{lay.tp * lay.sp, 1, lay.ep, lay.dp};
  if (!layout_problems(c, rep, cluster).empty()) return std::nullopt;
  return rep;
}

}  // namespace v4rt::launch::plan
