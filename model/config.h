// SPDX-License-Identifier: MIT
// The model's architecture as read from a checkpoint's Hugging Face config.json (spec §1.1).
// Every field the forward pass needs is here, validated once; lower layers take this struct (or
// narrower pieces of it), never JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace v4rt::model {

enum class LayerKind : uint8_t { kWindow = 0, kCSA = 4, kHCA = 128 };

struct RopeScaling {        // YaRN, applied only on compressed (ratio != 0) layers
  std::string type = "yarn";
  double factor = 16.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  int64_t original_max_position_embeddings = 65536;
};

struct QuantConfig {
  std::string quant_method = "fp8";
  std::string fmt = "e4m3";
  std::string activation_scheme = "dynamic";
  std::string scale_fmt = "ue8m0";
  int weight_block_size[2] = {128, 128};
  std::string expert_dtype = "fp4";  // "fp4" (packed I8 + per-32 scales) or "fp8"
};

struct ModelConfig {
  std::string architecture = "DeepseekV4ForCausalLM";
  std::string model_type = "deepseek_v4";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;             // D
  int num_hidden_layers = 0;           // L
  int num_attention_heads = 0;         // H
  int num_key_value_heads = 1;
  int head_dim = 0;                    // 512 in the release
  int qk_rope_head_dim = 0;            // 64: RoPE on the last dims of each head
  int q_lora_rank = 0;
  int o_groups = 0;
  int o_lora_rank = 0;
  int sliding_window = 128;
  std::vector<int> compress_ratios;    // num_hidden_layers entries, + one per MTP layer
  double compress_rope_theta = 160000.0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 1048576;
  int index_n_heads = 0;
  int index_head_dim = 0;
  int index_topk = 0;
  int n_routed_experts = 0;            // E
  int n_shared_experts = 1;
  int num_experts_per_tok = 0;         // k
  int moe_intermediate_size = 0;       // F
  int num_hash_layers = 0;
  std::string scoring_func = "sqrtsoftplus";
  std::string topk_method = "noaux_tc";
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  double swiglu_limit = 10.0;
  std::string hidden_act = "silu";
  int hc_mult = 4;
  int hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;
  int num_nextn_predict_layers = 0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  QuantConfig quant;
  std::string torch_dtype = "bfloat16";

  // Derived helpers.
  LayerKind layer_kind(int layer) const { return LayerKind(compress_ratios.at(size_t(layer))); }
  int compress_ratio(int layer) const { return compress_ratios.at(size_t(layer)); }
  bool is_hash_layer(int layer) const { return layer < num_hash_layers; }
  int heads_per_group() const { return num_attention_heads / o_groups; }
  int nope_dim() const { return head_dim - qk_rope_head_dim; }
};

// Parses config.json text (or the reference code's inference/config.json, recognised by its `dim`
// field); `source` names the file in error messages. Throws v4rt::Error naming the
// field on a missing, mistyped or inconsistent value.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
ModelConfig load_model_config(const std::string& path);  // reads the file, then parse_model_config
// config.json text for `config` (the field names and layout of the release files; parses back to an
// equal ModelConfig).
std::string model_config_json(const ModelConfig& config);
// Cross-field checks (heads % o_groups, ratios in {0,4,128}, list lengths, rope dim even, ...).
void validate(const ModelConfig& config, const std::string& source);

// The upper bound validate() holds each size field to: the largest release value (V4-Pro) times
// a margin of 8, rounded up to a power of two.
struct SizeBound {
  const char* key;  // config.json key
  int64_t value;    // the config's
  int64_t release;  // the largest release config's
  int64_t max;      // accepted at most
};
std::vector<SizeBound> size_bounds(const ModelConfig& config);

}  // namespace v4rt::model
