// SPDX-License-Identifier: MIT
// config.json parsing: both release files (values of spec §1.1), golden tiny-a, the presets, and
// rejection of inconsistent or mistyped fields with the field named.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/presets.h"
#include "test_util.h"

namespace v4rt::model {
namespace {

using testing::expect_error_naming;
using testing::read_text;

const std::string kRelease = V4RT_GOLDEN_DIR "/../spec/release";

TEST(ModelConfig, FlashReleaseParses) {
  const ModelConfig c = load_model_config(kRelease + "/flash/config.json");
  EXPECT_EQ(c.architecture, "DeepseekV4ForCausalLM");
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 43);
  EXPECT_EQ(c.num_attention_heads, 64);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.nope_dim(), 448);
  EXPECT_EQ(c.q_lora_rank, 1024);
  EXPECT_EQ(c.o_groups, 8);
  EXPECT_EQ(c.o_lora_rank, 1024);
  EXPECT_EQ(c.index_topk, 512);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.num_hash_layers, 3);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.5);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  EXPECT_EQ(c.layer_kind(0), LayerKind::kWindow);
  EXPECT_EQ(c.layer_kind(1), LayerKind::kWindow);
  EXPECT_EQ(c.layer_kind(2), LayerKind::kCSA);
  EXPECT_EQ(c.layer_kind(3), LayerKind::kHCA);
  EXPECT_EQ(c.layer_kind(42), LayerKind::kCSA);
  EXPECT_EQ(c.compress_ratio(43), 0);  // MTP
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 16.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 65536);
  EXPECT_DOUBLE_EQ(c.compress_rope_theta, 160000.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.quant.expert_dtype, "fp4");
  EXPECT_EQ(c.quant.scale_fmt, "ue8m0");
  EXPECT_EQ(c.quant.weight_block_size[0], 128);
  EXPECT_EQ(c.scoring_func, "sqrtsoftplus");
  EXPECT_TRUE(c.is_hash_layer(2));
  EXPECT_FALSE(c.is_hash_layer(3));
}

TEST(ModelConfig, ProReleaseParses) {
  const ModelConfig c = load_model_config(kRelease + "/pro/config.json");
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.o_groups, 16);
  EXPECT_EQ(c.index_topk, 1024);
  EXPECT_EQ(c.n_routed_experts, 384);
  EXPECT_EQ(c.moe_intermediate_size, 3072);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  ASSERT_EQ(c.compress_ratios.size(), 62u);
  EXPECT_EQ(c.compress_ratio(0), 128);
  EXPECT_EQ(c.compress_ratio(1), 128);
  EXPECT_EQ(c.compress_ratio(2), 4);
  EXPECT_EQ(c.compress_ratio(60), 4);
  EXPECT_EQ(c.compress_ratio(61), 0);
  EXPECT_EQ(c.heads_per_group(), 8);
}

// The presets are exactly the release files: equal once both are written back as JSON.
TEST(ModelConfig, PresetsEqualReleaseFiles) {
  for (const char* name : {"flash", "pro"}) {
    const ModelConfig file = load_model_config(kRelease + "/" + name + "/config.json");
    EXPECT_EQ(model_config_json(preset_config(name)), model_config_json(file)) << name;
  }
}

// The reference code's inference/config.json (other field names) gives the same model.
TEST(ModelConfig, ReferenceInferenceConfigAgrees) {
  for (const char* name : {"flash", "pro"}) {
    const ModelConfig hf = load_model_config(kRelease + "/" + name + "/config.json");
    const ModelConfig ref = load_model_config(kRelease + "/" + name + "/inference/config.json");
    EXPECT_EQ(model_config_json(ref), model_config_json(hf)) << name;
  }
}

TEST(ModelConfig, GoldenTinyAParses) {
  const ModelConfig c = load_model_config(V4RT_GOLDEN_DIR "/tiny-a/model/config.json");
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_hidden_layers, 6);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_EQ(c.compress_ratios, (std::vector<int>{0, 4, 128, 4, 128, 4}));
  EXPECT_EQ(c.index_n_heads, 16);
  EXPECT_EQ(c.index_head_dim, 64);
  EXPECT_EQ(c.num_hash_layers, 2);
  // The tiny preset is tiny-a's shape with the real vocab.
  ModelConfig t = preset_config("tiny");
  t.vocab_size = 1024;
  EXPECT_EQ(model_config_json(t), model_config_json(c));
}

TEST(ModelConfig, JsonRoundTrip) {
  const ModelConfig c = preset_config("tiny", /*mtp=*/true);
  EXPECT_EQ(c.compress_ratios.size(), 7u);
  const ModelConfig back = parse_model_config(model_config_json(c), "roundtrip");
  EXPECT_EQ(model_config_json(back), model_config_json(c));
}

nlohmann::json flash_json() { return nlohmann::json::parse(read_text(kRelease + "/flash/config.json")); }

TEST(ModelConfig, RatioCountMismatchNamesField) {
  nlohmann::json j = flash_json();
  j["compress_ratios"].erase(j["compress_ratios"].size() - 1);
  expect_error_naming([&] { parse_model_config(j.dump(), "config.json"); },
                      {"config.json: field 'compress_ratios' has 43 entries, expected 44 (num_hidden_layers 43 + "
                       "num_nextn_predict_layers 1)"});
}

TEST(ModelConfig, BadValuesNameField) {
  {
    nlohmann::json j = flash_json();
    j["hidden_size"] = "4096";
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"x.json", "'hidden_size'", "integer"});
  }
  {
    nlohmann::json j = flash_json();
    j.erase("num_attention_heads");
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"'num_attention_heads'", "missing"});
  }
  {
    nlohmann::json j = flash_json();
    j["compress_ratios"][5] = 16;
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"'compress_ratios'", "entry 5"});
  }
  {
    nlohmann::json j = flash_json();
    j["o_groups"] = 7;
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"'o_groups'", "7"});
  }
  {
    nlohmann::json j = flash_json();
    j["quantization_config"]["weight_block_size"] = {64, 64};
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"'quantization_config.weight_block_size'"});
  }
  {
    nlohmann::json j = flash_json();
    j["expert_dtype"] = "int4";
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"'expert_dtype'", "int4"});
  }
  {
    nlohmann::json j = flash_json();
    j["rope_scaling"]["factor"] = "big";
    expect_error_naming([&] { parse_model_config(j.dump(), "x.json"); }, {"'rope_scaling.factor'"});
  }
  expect_error_naming([&] { parse_model_config("{\"vocab_size\": 12,", "y.json"); }, {"y.json", "JSON"});
}

// Size fields are bounded before anything is sized from them: n_routed_experts 1e5 made `inspect`
// allocate 2.9 GB, 1e6 ended in std::bad_alloc, max_position_embeddings 2^62 was accepted.
TEST(ModelConfig, SizeFieldsAreBoundedNamingTheKey) {
  for (const auto& [key, value] : std::vector<std::pair<std::string, int64_t>>{
           {"n_routed_experts", 100000},
           {"n_routed_experts", 1000000},
           {"max_position_embeddings", int64_t(1) << 62},
           {"vocab_size", int64_t(1) << 40},
           {"hidden_size", 1 << 20},
           {"moe_intermediate_size", 1 << 20},
           {"index_topk", 1 << 20},
           {"hc_sinkhorn_iters", 1 << 20}}) {
    nlohmann::json j = flash_json();
    j[key] = value;
    expect_error_naming([&] { parse_model_config(j.dump(), "config.json"); },
                        {"config.json: field '" + key + "'", std::to_string(value), "at most"});
  }
  nlohmann::json j = flash_json();
  j["rope_scaling"]["original_max_position_embeddings"] = int64_t(1) << 40;
  expect_error_naming([&] { parse_model_config(j.dump(), "config.json"); },
                      {"'rope_scaling.original_max_position_embeddings'", "at most"});
  for (const char* preset : {"tiny", "flash", "pro"}) {  // every release and test config fits
    for (const SizeBound& b : size_bounds(preset_config(preset))) EXPECT_LE(b.value, b.max) << preset << " " << b.key;
  }
}

TEST(ModelConfig, SliceKeepsMtp) {
  const ModelConfig c = slice_layers(preset_config("flash"), 4);
  EXPECT_EQ(c.num_hidden_layers, 4);
  EXPECT_EQ(c.compress_ratios, (std::vector<int>{0, 0, 4, 128, 0}));
  EXPECT_EQ(c.num_hash_layers, 3);
  EXPECT_EQ(slice_layers(preset_config("flash"), 2).num_hash_layers, 2);
  expect_error_naming([] { preset_config("huge"); }, {"huge", "tiny, flash, pro"});
}

}  // namespace
}  // namespace v4rt::model
