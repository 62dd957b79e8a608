// SPDX-License-Identifier: MIT
// Model-only costs for the planner: checkpoint bytes per tensor family (spec §9 shapes), decode
// state bytes (spec §8.1/§8.2) and per-token multiply-adds (spec §8.3). Everything derives from the
// config; the tests pin the results to the release index's total_size and to the spec's tables.
#include "launch/plan/model_cost.h"

#include <algorithm>

#include "model/state.h"

namespace v4rt::launch::plan {
namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// FP8 e4m3 weight [rows, cols] plus its e8m0 scale grid [rows/128, cols/128] (1 byte each).
int64_t fp8_weight(const model::ModelConfig& c, int64_t rows, int64_t cols) {
  const int64_t br = c.quant.weight_block_size[0], bc = c.quant.weight_block_size[1];
  return rows * cols + cdiv(rows, br) * cdiv(cols, bc);
}

// FP4 e2m1 weight packed two per byte [rows, cols/2] plus e8m0 scales per 32 inputs [rows, cols/32].
int64_t fp4_weight(int64_t rows, int64_t cols) { return rows * cols / 2 + rows * (cols / 32); }

int64_t routed_expert_bytes(const model::ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.moe_intermediate_size;
  if (c.quant.expert_dtype == "fp8") return 2 * fp8_weight(c, f, d) + fp8_weight(c, d, f);
  return 2 * fp4_weight(f, d) + fp4_weight(d, f);
}

int64_t hc_mix_rows(const model::ModelConfig& c) { return int64_t(2 + c.hc_mult) * c.hc_mult; }

// hc_head_fn [hc, hc*D] f32, hc_head_base [hc], hc_head_scale [1].
int64_t hc_head_bytes(const model::ModelConfig& c) {
  return int64_t(c.hc_mult) * c.hc_mult * c.hidden_size * 4 + c.hc_mult * 4 + 4;
}

// One transformer block; `hash` selects tid2eid (hash routing) over the gate bias.
WeightGroups block_weights(const model::ModelConfig& c, int ratio, bool hash) {
  const int64_t d = c.hidden_size, hd = c.head_dim, q = c.q_lora_rank, h = c.num_attention_heads;
  const int64_t g = c.o_groups, ol = c.o_lora_rank, e = c.n_routed_experts, f = c.moe_intermediate_size;
  const int64_t ih = c.index_n_heads, id = c.index_head_dim, mix = hc_mix_rows(c);
  WeightGroups w;
  w.replicated += 2 * d * 2;                                      // attn_norm, ffn_norm
  w.replicated += 2 * (mix * c.hc_mult * d * 4 + mix * 4 + 3 * 4);  // hc_{attn,ffn}_{fn,base,scale}
  w.replicated += fp8_weight(c, q, d) + q * 2;                    // wq_a, q_norm
  w.replicated += fp8_weight(c, hd, d) + hd * 2;                  // wkv, kv_norm
  w.tp_sharded += fp8_weight(c, h * hd, q);                       // wq_b
  w.tp_sharded += fp8_weight(c, g * ol, (h / g) * hd);            // wo_a
  w.tp_sharded += fp8_weight(c, d, g * ol);                       // wo_b
  w.tp_sharded += h * 4;                                          // attn_sink
  if (ratio != 0) {
    const int64_t overlap = ratio == 4 ? 2 : 1;
    w.replicated += 2 * (overlap * hd * d * 2) + ratio * overlap * hd * 4 + hd * 2;  // compressor
  }
  if (ratio == 4) {
    w.tp_sharded += fp8_weight(c, ih * id, q) + ih * d * 2;       // indexer wq_b, weights_proj
    w.replicated += 2 * (2 * id * d * 2) + 4 * 2 * id * 4 + id * 2;  // indexer compressor
  }
  w.replicated += e * d * 2;                                      // gate.weight
  w.replicated += hash ? c.vocab_size * c.num_experts_per_tok * 8 : e * 4;  // tid2eid | bias
  w.replicated += c.n_shared_experts * (2 * fp8_weight(c, f, d) + fp8_weight(c, d, f));
  w.experts += e * routed_expert_bytes(c);
  return w;
}

void add(WeightGroups& into, const WeightGroups& w) {
  into.replicated += w.replicated;
  into.tp_sharded += w.tp_sharded;
  into.experts += w.experts;
}

}  // namespace

double WeightBytes::per_gpu(int tp, int ep) const {
  const WeightGroups all{main.replicated + mtp.replicated, main.tp_sharded + mtp.tp_sharded,
                         main.experts + mtp.experts};
  return double(all.replicated) + double(all.tp_sharded) / tp + double(all.experts) / ep;
}

WeightBytes weight_bytes(const model::ModelConfig& c) {
  WeightBytes w;
  const int64_t d = c.hidden_size, v = c.vocab_size;
  w.embed = v * d * 2;
  w.main.tp_sharded += w.embed + v * d * 2;  // embed, head (bf16, column-split)
  w.main.replicated += d * 2 + hc_head_bytes(c);  // norm, hc_head_*
  for (int layer = 0; layer < c.num_hidden_layers; ++layer)
    add(w.main, block_weights(c, c.compress_ratio(layer), c.is_hash_layer(layer)));
  for (int i = 0; i < c.num_nextn_predict_layers; ++i) {
    const int ratio = size_t(c.num_hidden_layers + i) < c.compress_ratios.size()
                          ? c.compress_ratio(c.num_hidden_layers + i) : 0;
    add(w.mtp, block_weights(c, ratio, /*hash=*/false));
    w.mtp.replicated += 2 * fp8_weight(c, d, d);   // e_proj, h_proj
    w.mtp.replicated += 3 * d * 2;                 // enorm, hnorm, norm
    w.mtp.replicated += hc_head_bytes(c);
  }
  w.expert_bytes = routed_expert_bytes(c);
  return w;
}

const char* kv_format_name(KvFormat format) {
  switch (format) {
    case KvFormat::kCompact: return "compact";
    case KvFormat::kBf16: return "bf16";
    case KvFormat::kF32: return "f32";
  }
  return "?";
}

std::optional<KvFormat> parse_kv_format(const std::string& name) {
  for (KvFormat f : {KvFormat::kCompact, KvFormat::kBf16, KvFormat::kF32})
    if (name == kv_format_name(f)) return f;
  return std::nullopt;
}

KvEntryBytes kv_entry_bytes(const model::ModelConfig& c, KvFormat format) {
  KvEntryBytes b;
  b.window_slot = int64_t(c.head_dim) * 2;
  if (format == KvFormat::kBf16) {
    b.main_entry = int64_t(c.head_dim) * 2;
    b.indexer_key = int64_t(c.index_head_dim) * 2;
    return b;
  }
  if (format == KvFormat::kF32) b.window_slot = int64_t(c.head_dim) * 4;
  // The rows model::SequenceState stores (common/kv_format.h). Compact: e4m3 non-RoPE dims + bf16
  // RoPE dims + one e8m0 scale per 64 non-RoPE dims, padded to 8 bytes (448 + 128 + 7 + 1 = 584);
  // indexer key FP4 e2m1 packed + one e8m0 scale per 32, padded to 4 (64 + 4 = 68).
  const model::KvStorage storage = format == KvFormat::kCompact ? model::KvStorage::kCompact : model::KvStorage::kF32;
  b.main_entry = model::kv_row_bytes(model::entry_layout(c, storage));
  b.indexer_key = model::kv_row_bytes(model::index_key_layout(c, storage));
  return b;
}

KvBytes kv_bytes(const model::ModelConfig& c, int64_t context, KvFormat format) {
  const KvEntryBytes e = kv_entry_bytes(c, format);
  const int64_t hd = c.head_dim, id = c.index_head_dim;
  KvBytes kv;
  if (format == KvFormat::kCompact) {  // the runtime's paged rows: whole pool blocks (model::entry_table_bytes)
    const KvRowLayout entry = model::entry_layout(c, model::KvStorage::kCompact);
    const KvRowLayout key = model::index_key_layout(c, model::KvStorage::kCompact);
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
      const int ratio = c.compress_ratio(layer);
      if (ratio != 0) kv.compressed += model::entry_table_bytes(context / ratio, entry);
      if (ratio == 4) kv.compressed += model::entry_table_bytes(context / 4, key);
    }
  } else {
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
      const int ratio = c.compress_ratio(layer);
      if (ratio == 4) kv.compressed += (context / 4) * (e.main_entry + e.indexer_key);
      else if (ratio != 0) kv.compressed += (context / ratio) * e.main_entry;
    }
  }
  if (format == KvFormat::kBf16) {  // the spec's reference layout (§8.1): bf16 rings, fp32 compressor state
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
      const int ratio = c.compress_ratio(layer);
      kv.window_ring += int64_t(c.sliding_window) * e.window_slot;
      if (ratio == 4) kv.compressor_state += 2 * (8 * 2 * hd * 4) + 2 * (8 * 2 * id * 4);  // kv + score, main + indexer
      else if (ratio != 0) kv.compressor_state += 2 * (int64_t(ratio) * hd * 4);
    }
    return kv;
  }
  // The runtime's storages (compact under the official numerics, f32 under the reference ones) cost
  // what model::SequenceState allocates (model::state_bytes): F32 window tails of
  // model::window_table_rows rows and F32 compressor buffers in both, the rest is the entries and
  // keys above.
  kv.window_ring = int64_t(c.num_hidden_layers) * (context > 0 ? model::window_table_rows(c) : 0) * hd * 4;
  const model::KvStorage storage = format == KvFormat::kCompact ? model::KvStorage::kCompact : model::KvStorage::kF32;
  kv.compressor_state = model::state_bytes(c, context, storage) - kv.compressed - kv.window_ring;
  return kv;
}

double kv_bytes_per_token(const model::ModelConfig& c, KvFormat format) {
  const KvEntryBytes e = kv_entry_bytes(c, format);
  double per_token = 0;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const int ratio = c.compress_ratio(layer);
    if (ratio == 4) per_token += double(e.main_entry + e.indexer_key) / 4;
    else if (ratio != 0) per_token += double(e.main_entry) / ratio;
  }
  return per_token;
}

LinearMacs linear_macs(const model::ModelConfig& c) {
  const double d = double(c.hidden_size), hd = c.head_dim, q = c.q_lora_rank, h = c.num_attention_heads;
  const double g = c.o_groups, ol = c.o_lora_rank, f = c.moe_intermediate_size;
  const double ih = c.index_n_heads, id = c.index_head_dim, mix = double(hc_mix_rows(c));
  LinearMacs m;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const int ratio = c.compress_ratio(layer);
    m.replicated += q * d + hd * d + 2 * mix * c.hc_mult * d + c.n_routed_experts * d;
    m.tp_sharded += h * hd * q + g * ol * (h / g) * hd + d * g * ol;
    if (ratio != 0) m.replicated += 2 * (ratio == 4 ? 2 : 1) * hd * d;
    if (ratio == 4) {
      m.tp_sharded += ih * id * q + ih * d;
      m.replicated += 2 * 2 * id * d;
    }
    m.shared_expert += c.n_shared_experts * 3 * d * f;
    m.routed_expert += 3 * d * f;
  }
  m.replicated += double(c.hc_mult) * c.hc_mult * d;  // hc_head
  m.head = double(c.vocab_size) * d;
  return m;
}

namespace {

// Σ_{n=1..len} floor(n / m): visible compressed entries summed over a causal prompt.
double sum_floor_div(int64_t len, int64_t m) {
  const int64_t q = len / m;
  return double(m) * double(q) * double(q - 1) / 2 + double(q) * double(len - q * m + 1);
}

// Σ_{n=1..len} min(cap, floor(n / m)).
double sum_min_floor_div(int64_t len, int64_t m, int64_t cap) {
  const int64_t n0 = cap * m;  // first n with floor(n/m) == cap
  if (len < n0) return sum_floor_div(len, m);
  return sum_floor_div(n0 - 1, m) + double(len - n0 + 1) * double(cap);
}

// Σ_{n=1..len} min(cap, n).
double sum_min(int64_t len, int64_t cap) {
  if (len <= cap) return double(len) * double(len + 1) / 2;
  return double(cap) * double(cap + 1) / 2 + double(len - cap) * double(cap);
}

}  // namespace

AttentionFlops decode_attention_flops(const model::ModelConfig& c, int64_t context) {
  const double qk_pv = 2.0 * 2.0 * c.num_attention_heads * c.head_dim;  // per candidate
  const double window = double(std::min<int64_t>(c.sliding_window, context));
  AttentionFlops a;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const int ratio = c.compress_ratio(layer);
    a.core_window += qk_pv * window;
    if (ratio == 4) {
      const int64_t visible = context / 4;
      a.indexer += 2.0 * c.index_n_heads * c.index_head_dim * double(visible);
      a.core_compressed += qk_pv * double(std::min<int64_t>(c.index_topk, visible));
    } else if (ratio != 0) {
      a.core_compressed += qk_pv * double(context / ratio);
    }
  }
  return a;
}

AttentionFlops prefill_attention_flops(const model::ModelConfig& c, int64_t length) {
  const double qk_pv = 2.0 * 2.0 * c.num_attention_heads * c.head_dim;
  AttentionFlops a;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const int ratio = c.compress_ratio(layer);
    a.core_window += qk_pv * sum_min(length, c.sliding_window);
    if (ratio == 4) {
      a.indexer += 2.0 * c.index_n_heads * c.index_head_dim * sum_floor_div(length, 4);
      a.core_compressed += qk_pv * sum_min_floor_div(length, 4, c.index_topk);
    } else if (ratio != 0) {
      a.core_compressed += qk_pv * sum_floor_div(length, ratio);
    }
  }
  return a;
}

KvReadBytes decode_kv_read_bytes(const model::ModelConfig& c, int64_t context, KvFormat format) {
  const KvEntryBytes e = kv_entry_bytes(c, format);
  const double window = double(std::min<int64_t>(c.sliding_window, context));
  KvReadBytes r;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const int ratio = c.compress_ratio(layer);
    r.window += window * double(e.window_slot);
    if (ratio == 4) {
      const int64_t visible = context / 4;
      r.compressed += double(visible) * double(e.indexer_key) +
                      double(std::min<int64_t>(c.index_topk, visible)) * double(e.main_entry);
    } else if (ratio != 0) {
      r.compressed += double(context / ratio) * double(e.main_entry);
    }
  }
  return r;
}

}  // namespace v4rt::launch::plan
