// SPDX-License-Identifier: MIT
// Per-family launches, bytes and FLOPs of one decode step. Launch counts follow the runtime's
// decode path (model/attention.cpp, moe.cpp, mhc.cpp: one kernel per projection, gate, expert
// group, attention, indexer scan and top-k, two hc mixes in and two out per layer, ~18 small
// element-wise kernels per layer); bytes are the ideal traffic (each weight read once per step,
// the decode state the step reads, activations of the hc stream).
#include "launch/plan/op_cost.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace v4rt::launch::plan {
namespace {

constexpr double kOtherLaunchesPerLayer = 18;  // rms_norm x4, rope x2-3, qdq, add, swiglu, copies, fill...
constexpr double kHeadLaunches = 3;            // embedding, hc_head, LM head (+ final norm in other)

double cdiv(double a, double b) { return std::ceil(a / b); }

}  // namespace

double OpCost::roofline_s(const GpuSpec& gpu) const {
  const double mem = bytes / gpu.hbm_bytes_per_s;
  const double comp = peak_flops > 0 ? flops / peak_flops : 0;
  return std::max(mem, comp);
}

StepOps decode_step_ops(const model::ModelConfig& c, const GpuSpec& gpu, const parallel::Layout& lay,
                        int64_t context, double b, double b_global, KvFormat format, bool head_on_leader) {
  StepOps ops{};
  const double d = c.hidden_size, hd = c.head_dim, q = c.q_lora_rank, h = c.num_attention_heads;
  const double g = c.o_groups, ol = c.o_lora_rank, e = c.n_routed_experts, f = c.moe_intermediate_size;
  const double ih = c.index_n_heads, id = c.index_head_dim, hc = c.hc_mult, mix = (2.0 + hc) * hc;
  const double k = c.num_experts_per_tok, v = c.vocab_size;
  const double tp = lay.tp, sp = lay.sp, ep = lay.ep, world = lay.world();
  const double br = c.quant.weight_block_size[0], bc = c.quant.weight_block_size[1];
  auto fp8 = [&](double rows, double cols) { return rows * cols + cdiv(rows, br) * cdiv(cols, bc); };
  const KvEntryBytes kv = kv_entry_bytes(c, format);
  const double window = double(std::min<int64_t>(c.sliding_window, context));
  const double expert_bytes = double(weight_bytes(c).expert_bytes);

  OpCost& lin = ops[size_t(OpFamily::kLinear)];
  OpCost& head = ops[size_t(OpFamily::kHead)];
  OpCost& exp = ops[size_t(OpFamily::kExperts)];
  OpCost& gate = ops[size_t(OpFamily::kGate)];
  OpCost& att = ops[size_t(OpFamily::kAttention)];
  OpCost& idx = ops[size_t(OpFamily::kIndexer)];
  OpCost& mixes = ops[size_t(OpFamily::kHc)];
  OpCost& other = ops[size_t(OpFamily::kOther)];
  lin.peak_flops = idx.peak_flops = gpu.fp8_flops;
  exp.peak_flops = gpu.fp4_flops > 0 ? gpu.fp4_flops : gpu.fp8_flops;
  head.peak_flops = gate.peak_flops = att.peak_flops = mixes.peak_flops = other.peak_flops = gpu.bf16_flops;

  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const int ratio = c.compress_ratio(layer);
    // Projections: wq_a, wkv, shared expert (replicated); wq_b, wo_a, wo_b (TP-split).
    double w = fp8(q, d) + fp8(hd, d) + (fp8(h * hd, q) + fp8(g * ol, (h / g) * hd) + fp8(d, g * ol)) / tp +
               c.n_shared_experts * (2 * fp8(f, d) + fp8(d, f));
    double macs = q * d + hd * d + (h * hd * q + g * ol * (h / g) * hd + d * g * ol) / tp +
                  c.n_shared_experts * 3 * d * f;
    double launches = 8;
    if (ratio != 0) {  // compressor wkv + wgate (bf16)
      const double overlap = ratio == 4 ? 2 : 1;
      w += 2 * overlap * hd * d * 2;
      macs += 2 * overlap * hd * d;
      launches += 2;
    }
    if (ratio == 4) {  // indexer wq_b (FP8), weights_proj (bf16), indexer compressor (bf16)
      w += (fp8(ih * id, q) + ih * d * 2) / tp + 2 * 2 * id * d * 2;
      macs += (ih * id * q + ih * d) / tp + 2 * 2 * id * d;
      launches += 4;
    }
    lin.bytes += w;
    lin.flops += 2 * b * macs;
    lin.launches += launches;
    // Gate: bf16 [E, D] GEMV + top-k.
    gate.bytes += e * d * 2 + b * d * 2;
    gate.flops += 2 * b * e * d;
    gate.launches += 1;
    // Routed experts: the distinct experts the EP group's tokens touch (uniform routing), this
    // GPU's 1/ep share of them.
    const double group_tokens = b_global * ep / world;
    const double touched = e * (1.0 - std::pow(1.0 - k / e, group_tokens));
    exp.bytes += touched / ep * expert_bytes;
    exp.flops += 2 * b_global * k * 3 * d * f / world;
    exp.launches += 1;
    // Sparse attention: the MQA latent of every candidate (window + compressed), heads over TP,
    // compressed candidates over SP.
    const double comp = ratio == 4   ? double(std::min<int64_t>(c.index_topk, context / 4))
                        : ratio != 0 ? double(context / ratio)
                                     : 0;
    att.bytes += b * (window * kv.window_slot + comp * kv.main_entry / sp);
    att.flops += b * 4 * (h / tp) * hd * (window + comp / sp);
    att.launches += 1;
    // Indexer (CSA): every visible key scored (+ f32 score written and read by top-k).
    if (ratio == 4) {
      const double keys = double(context / 4) / sp;
      idx.bytes += b * keys * (kv.indexer_key + 8);
      idx.flops += b * 2 * (ih / tp) * id * keys;
      idx.launches += 2;
    }
    // Hyper-connections: two f32 [mix, hc*D] mixes in, two merges out; the hc*D f32 stream.
    mixes.bytes += 2 * mix * hc * d * 4 + b * 4 * hc * d * 4;
    mixes.flops += 2 * 2 * b * mix * hc * d;
    mixes.launches += 4;
    other.launches += kOtherLaunchesPerLayer;
  }
  // Embedding rows, hc_head (f32 [hc, hc*D]), vocabulary-split bf16 LM head.
  const double head_tp = head_on_leader ? 1 : tp;
  head.bytes = v * d * 2 / head_tp + hc * hc * d * 4 + b * d * 2;
  head.flops = 2 * b * (v * d / head_tp + hc * hc * d);
  head.launches = kHeadLaunches;
  other.launches += 2;
  return ops;
}

double family_time_s(const OpCost& op, const GpuSpec& gpu, const FamilyCalibration& fam,
                     const Calibration& calib) {
  if (fam.fitted) return op.launches * fam.launch_s + op.roofline_s(gpu) / fam.efficiency;
  const double mem = op.bytes / (gpu.hbm_bytes_per_s * calib.hbm_fraction);
  const double comp = op.peak_flops > 0 ? op.flops / (op.peak_flops * calib.flop_fraction) : 0;
  return std::max(mem, comp);
}

OpFamily op_family_of_kernel(const std::string& raw, const model::ModelConfig& c) {
  std::string name = raw;
  for (char& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  const size_t first = name.find_first_not_of(' '), last = name.find_last_not_of(' ');
  name = first == std::string::npos ? "" : name.substr(first, last - first + 1);
  if (auto fam = parse_op_family(name)) return *fam;
  auto starts = [&](const char* p) { return name.rfind(p, 0) == 0; };
  if (starts("linear")) {
    // The LM head is the linear with vocab_size rows ("linear bf16 129280x4096").
    const std::string rows = std::to_string(c.vocab_size) + "x";
    const size_t at = name.find(rows);
    return at != std::string::npos && at > 0 && name[at - 1] == ' ' ? OpFamily::kHead : OpFamily::kLinear;
  }
  if (starts("grouped_linear")) return OpFamily::kLinear;
  if (starts("hc_head") || starts("embedding")) return OpFamily::kHead;
  if (starts("moe_experts")) return OpFamily::kExperts;
  if (starts("moe_gate")) return OpFamily::kGate;
  if (starts("sparse_attention")) return OpFamily::kAttention;
  if (starts("indexer") || starts("topk")) return OpFamily::kIndexer;
  if (starts("hc_pre") || starts("hc_post")) return OpFamily::kHc;
  return OpFamily::kOther;
}

model::ModelConfig with_layers(const model::ModelConfig& config, int layers) {
  if (layers <= 0) return config;
  model::ModelConfig c = config;
  c.num_hidden_layers = layers;
  c.compress_ratios.clear();
  for (int l = 0; l < layers; ++l) c.compress_ratios.push_back(l % 2 == 0 ? 4 : 128);
  c.num_nextn_predict_layers = 0;
  c.num_hash_layers = 0;
  return c;
}

}  // namespace v4rt::launch::plan
