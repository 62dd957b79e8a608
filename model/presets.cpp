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

// Each preset names only what differs from ModelConfig's defaults, which are the release values
// (window 128, RoPE thetas, YaRN `rope_scaling = {}`, mHC, one shared expert, FP8 + FP4 `quant = {}`).
ModelConfig flash() {
  return ModelConfig{.vocab_size = 129280, .hidden_size = 4096, .num_hidden_layers = 43,
                     .num_attention_heads = 64, .head_dim = 512, .qk_rope_head_dim = 64, .q_lora_rank = 1024,
                     .o_groups = 8, .o_lora_rank = 1024, .compress_ratios = release_ratios(0, 20),
                     .rope_scaling = {}, .index_n_heads = 64, .index_head_dim = 128, .index_topk = 512,
                     .n_routed_experts = 256, .num_experts_per_tok = 6, .moe_intermediate_size = 2048,
                     .num_hash_layers = 3, .routed_scaling_factor = 1.5, .num_nextn_predict_layers = 1,
                     .quant = {}};
}

ModelConfig pro() {  // Flash's architecture, scaled up
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

ModelConfig tiny(bool mtp) {  // golden tiny-a's shape with the real vocabulary
  ModelConfig c{.vocab_size = 129280, .hidden_size = 256, .num_hidden_layers = 6, .num_attention_heads = 8,
                .head_dim = 128, .qk_rope_head_dim = 32, .q_lora_rank = 128, .o_groups = 2, .o_lora_rank = 64,
                .compress_ratios = {0, 4, 128, 4, 128, 4}, .rope_scaling = {}, .index_n_heads = 16,
                .index_head_dim = 64, .index_topk = 16, .n_routed_experts = 16, .num_experts_per_tok = 4,
                .moe_intermediate_size = 128, .num_hash_layers = 2, .routed_scaling_factor = 1.5,
                .num_nextn_predict_layers = mtp ? 1 : 0, .quant = {}};
  if (mtp) c.compress_ratios.push_back(0);  // the MTP layer is a window layer
  return c;
}

// The one list of presets: names, builders, and the "known:" list of the unknown-name error.
struct Preset {
  const char* name;
  ModelConfig (*build)(bool mtp);  // flash and pro always have their MTP layer
};
constexpr Preset kPresets[] = {
    {"tiny", tiny},
    {"flash", [](bool) { return flash(); }},
    {"pro", [](bool) { return pro(); }},
};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

ModelConfig preset_config(const std::string& name, bool mtp) {
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    ModelConfig c = p.build(mtp);
    validate(c, "preset '" + name + "'");
    return c;
  }
  std::string known;
  for (const Preset& p : kPresets) known += (known.empty() ? "" : ", ") + std::string(p.name);
  V4RT_FAIL("unknown model preset '" << name << "' (known: " << known << ")");
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
