// SPDX-License-Identifier: MIT
// Preset ModelConfigs (see presets.h). Flash and Pro values are those of spec §1.1; a test parses
// the release config.json files and compares them field by field.
#include "model/presets.h"

#include <algorithm>

#include "common/check.h"

namespace v4rt::model {

namespace {

// [0, 0] + [4, 128] x 20 + [4] + MTP [0]  (Flash);  [128, 128] + [4, 128] x 29 + [4] + [0]  (Pro)
std::vector<int> release_ratios(int first, int pairs) {
  std::vector<int> r = {first, first};
  for (int i = 0; i < pairs; ++i) {
    r.push_back(4);
    r.push_back(128);
  }
  r.push_back(4);
  r.push_back(0);
  return r;
}

ModelConfig flash() {
  ModelConfig c;
  c.vocab_size = 129280;
  c.hidden_size = 4096;
  c.num_hidden_layers = 43;
  c.num_attention_heads = 64;
  c.head_dim = 512;
  c.qk_rope_head_dim = 64;
  c.q_lora_rank = 1024;
  c.o_groups = 8;
  c.o_lora_rank = 1024;
  c.compress_ratios = release_ratios(0, 20);
  c.compress_rope_theta = 160000.0;
  c.rope_theta = 10000.0;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.index_topk = 512;
  c.n_routed_experts = 256;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 6;
  c.moe_intermediate_size = 2048;
  c.num_hash_layers = 3;
  c.routed_scaling_factor = 1.5;
  c.num_nextn_predict_layers = 1;
  return c;
}

ModelConfig pro() {
  ModelConfig c = flash();
  c.hidden_size = 7168;
  c.num_hidden_layers = 61;
  c.num_attention_heads = 128;
  c.q_lora_rank = 1536;
  c.o_groups = 16;
  c.compress_ratios = release_ratios(128, 29);
  c.index_topk = 1024;
  c.n_routed_experts = 384;
  c.moe_intermediate_size = 3072;
  c.routed_scaling_factor = 2.5;
  return c;
}

ModelConfig tiny(bool mtp) {
  ModelConfig c;
  c.vocab_size = 129280;
  c.hidden_size = 256;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 8;
  c.head_dim = 128;
  c.qk_rope_head_dim = 32;
  c.q_lora_rank = 128;
  c.o_groups = 2;
  c.o_lora_rank = 64;
  c.compress_ratios = {0, 4, 128, 4, 128, 4};
  c.index_n_heads = 16;
  c.index_head_dim = 64;
  c.index_topk = 16;
  c.n_routed_experts = 16;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.moe_intermediate_size = 128;
  c.num_hash_layers = 2;
  c.routed_scaling_factor = 1.5;
  c.num_nextn_predict_layers = mtp ? 1 : 0;
  if (mtp) c.compress_ratios.push_back(0);
  return c;
}

}  // namespace

std::vector<std::string> preset_names() { return {"tiny", "flash", "pro"}; }

ModelConfig preset_config(const std::string& name, bool mtp) {
  ModelConfig c;
  if (name == "tiny") {
    c = tiny(mtp);
  } else if (name == "flash") {
    c = flash();
  } else if (name == "pro") {
    c = pro();
  } else {
    V4RT_FAIL("unknown model preset '" << name << "' (known: tiny, flash, pro)");
  }
  validate(c, "preset '" + name + "'");
  return c;
}

ModelConfig slice_layers(const ModelConfig& config, int num_layers) {
  V4RT_REQUIRE(num_layers >= 1 && num_layers <= config.num_hidden_layers,
               "layer slice " << num_layers << " must be in [1, " << config.num_hidden_layers << "]");
  ModelConfig c = config;
  c.num_hidden_layers = num_layers;
  c.compress_ratios.assign(config.compress_ratios.begin(), config.compress_ratios.begin() + num_layers);
  c.compress_ratios.insert(c.compress_ratios.end(), config.compress_ratios.begin() + config.num_hidden_layers,
                           config.compress_ratios.end());
  c.num_hash_layers = std::min(c.num_hash_layers, num_layers);
  return c;
}

}  // namespace v4rt::model
