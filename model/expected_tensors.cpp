// SPDX-License-Identifier: MIT
// The tensor inventory of a V4 checkpoint (spec §9) as a function of its config: names, dtypes and
// shapes for the top level, every layer (window / CSA / HCA, hash- or score-routed) and the MTP
// blocks. Checked against the official Flash and Pro index files (69,187 and 145,116 names).
#include <cstdio>
#include <string>

#include "model/checkpoint.h"

namespace v4rt::model {

namespace {

class Inventory {
 public:
  explicit Inventory(const ModelConfig& c) : c_(c) {}

  void add(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    out_[name] = ExpectedTensor{dtype, std::move(shape)};
  }
  // FP8 e4m3 weight [out, in] + ue8m0 scale on the ceil 128x128 grid.
  void fp8(const std::string& base, int64_t out, int64_t in) {
    add(base + ".weight", DType::kF8E4M3, {out, in});
    add(base + ".scale", DType::kF8E8M0, {(out + 127) / 128, (in + 127) / 128});
  }
  // Routed expert weight [out, in]: packed FP4 (I8 [out, in/2] + per-32 scales) or FP8.
  void expert(const std::string& base, int64_t out, int64_t in) {
    if (c_.quant.expert_dtype == "fp8") {
      fp8(base, out, in);
      return;
    }
    add(base + ".weight", DType::kI8, {out, in / 2});
    add(base + ".scale", DType::kF8E8M0, {out, in / 32});
  }
  void hc_head(const std::string& p) {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    add(p + "hc_head_fn", DType::kF32, {hc, hc * d});
    add(p + "hc_head_base", DType::kF32, {hc});
    add(p + "hc_head_scale", DType::kF32, {1});
  }

  // One transformer block under prefix `p` ("layers.7." or "mtp.0.").
  void block(const std::string& p, int ratio, bool hash_routed) {
    const int64_t d = c_.hidden_size, hc = c_.hc_mult, mix = (2 + hc) * hc;
    const int64_t h = c_.num_attention_heads, hd = c_.head_dim, g = c_.o_groups;
    add(p + "attn_norm.weight", DType::kBF16, {d});
    add(p + "ffn_norm.weight", DType::kBF16, {d});
    for (const char* site : {"attn", "ffn"}) {
      add(p + "hc_" + site + "_fn", DType::kF32, {mix, hc * d});
      add(p + "hc_" + site + "_base", DType::kF32, {mix});
      add(p + "hc_" + site + "_scale", DType::kF32, {3});
    }
    const std::string a = p + "attn.";
    fp8(a + "wq_a", c_.q_lora_rank, d);
    add(a + "q_norm.weight", DType::kBF16, {c_.q_lora_rank});
    fp8(a + "wq_b", h * hd, c_.q_lora_rank);
    fp8(a + "wkv", hd, d);
    add(a + "kv_norm.weight", DType::kBF16, {hd});
    fp8(a + "wo_a", g * c_.o_lora_rank, h * hd / g);
    fp8(a + "wo_b", d, g * c_.o_lora_rank);
    add(a + "attn_sink", DType::kF32, {h});
    if (ratio != 0) {
      const int64_t coff = ratio == 4 ? 2 : 1;  // CSA compresses overlapping windows: two halves
      add(a + "compressor.wkv.weight", DType::kBF16, {coff * hd, d});
      add(a + "compressor.wgate.weight", DType::kBF16, {coff * hd, d});
      add(a + "compressor.ape", DType::kF32, {ratio, coff * hd});
      add(a + "compressor.norm.weight", DType::kBF16, {hd});
    }
    if (ratio == 4) {
      const int64_t ih = c_.index_n_heads, id = c_.index_head_dim;
      fp8(a + "indexer.wq_b", ih * id, c_.q_lora_rank);
      add(a + "indexer.weights_proj.weight", DType::kBF16, {ih, d});
      add(a + "indexer.compressor.wkv.weight", DType::kBF16, {2 * id, d});
      add(a + "indexer.compressor.wgate.weight", DType::kBF16, {2 * id, d});
      add(a + "indexer.compressor.ape", DType::kF32, {4, 2 * id});
      add(a + "indexer.compressor.norm.weight", DType::kBF16, {id});
    }
    const std::string f = p + "ffn.";
    const int64_t e_count = c_.n_routed_experts, inter = c_.moe_intermediate_size;
    add(f + "gate.weight", DType::kBF16, {e_count, d});
    if (hash_routed) {
      add(f + "gate.tid2eid", DType::kI64, {c_.vocab_size, c_.num_experts_per_tok});
    } else {
      add(f + "gate.bias", DType::kF32, {e_count});
    }
    for (int64_t e = 0; e < e_count; ++e) {
      const std::string x = f + "experts." + std::to_string(e) + ".";
      expert(x + "w1", inter, d);
      expert(x + "w3", inter, d);
      expert(x + "w2", d, inter);
    }
    if (c_.n_shared_experts > 0) {
      const int64_t si = inter * c_.n_shared_experts;
      fp8(f + "shared_experts.w1", si, d);
      fp8(f + "shared_experts.w3", si, d);
      fp8(f + "shared_experts.w2", d, si);
    }
  }

  std::map<std::string, ExpectedTensor> take() { return std::move(out_); }

 private:
  const ModelConfig& c_;
  std::map<std::string, ExpectedTensor> out_;
};

}  // namespace

std::map<std::string, ExpectedTensor> expected_tensors(const ModelConfig& config) {
  Inventory inv(config);
  const int64_t d = config.hidden_size;
  inv.add("embed.weight", DType::kBF16, {config.vocab_size, d});
  inv.add("head.weight", DType::kBF16, {config.vocab_size, d});
  inv.add("norm.weight", DType::kBF16, {d});
  inv.hc_head("");
  for (int l = 0; l < config.num_hidden_layers; ++l)
    inv.block("layers." + std::to_string(l) + ".", config.compress_ratio(l), config.is_hash_layer(l));
  for (int m = 0; m < config.num_nextn_predict_layers; ++m) {
    const std::string p = "mtp." + std::to_string(m) + ".";
    inv.block(p, config.compress_ratio(config.num_hidden_layers + m), /*hash_routed=*/false);
    inv.fp8(p + "e_proj", d, d);
    inv.fp8(p + "h_proj", d, d);
    inv.add(p + "enorm.weight", DType::kBF16, {d});
    inv.add(p + "hnorm.weight", DType::kBF16, {d});
    inv.add(p + "norm.weight", DType::kBF16, {d});
    inv.hc_head(p);
  }
  return inv.take();
}

std::string release_shard_name(const ModelConfig& config, const std::string& tensor) {
  const int n = config.num_hidden_layers + 2 + (config.num_nextn_predict_layers > 0 ? 1 : 0);
  int shard = n - (config.num_nextn_predict_layers > 0 ? 1 : 0);  // head, norm, hc_head_*
  if (tensor.rfind("embed.", 0) == 0) {
    shard = 1;
  } else if (tensor.rfind("mtp.", 0) == 0) {
    shard = n;
  } else if (tensor.rfind("layers.", 0) == 0) {
    shard = std::stoi(tensor.substr(7)) + 2;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", shard, n);
  return buf;
}

}  // namespace v4rt::model
