// SPDX-License-Identifier: MIT
// config.json -> ModelConfig (spec §1.1) and the cross-field checks every later layer relies on.
// Fields the forward pass cannot do without are required; the rest default to the release values.
// Every error names the file and the field.
#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "common/json_depth.h"

namespace v4rt::model {

using nlohmann::json;

namespace {

// An integer JSON value that fits `int` (a list entry of compress_ratios or weight_block_size):
// 2^32 + 4 must not wrap to 4.
bool fits_int(const json& v) { return v.is_number_integer() && v.get<int64_t>() == v.get<int>(); }

// Reads typed fields out of one JSON object, naming `source` and the field path in errors.
class FieldReader {
 public:
  FieldReader(const json& obj, std::string source, std::string prefix = "")
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return obj_.contains(key) && !obj_[key].is_null(); }
  std::string where(const char* key) const { return source_ + ": field '" + prefix_ + key + "'"; }

  // Every reader: an absent (or null) key keeps the default unless `required`; a present value
  // must pass `is_type` ("<file>: field '<key>' must be <type>, got <value>" otherwise).
  template <typename T>
  void integer(const char* key, T* out, bool required) const {
    const json* v = typed(key, required, is_integral_number, "an integer");
    if (!v) return;
    const int64_t x = v->is_number_float() ? int64_t(v->get<double>()) : v->get<int64_t>();
    V4RT_REQUIRE(x >= int64_t(std::numeric_limits<T>::min()) && x <= int64_t(std::numeric_limits<T>::max()),
                 where(key) << " value " << x << " is out of range");
    *out = T(x);
  }
  void number(const char* key, double* out, bool required = false) const {
    if (const json* v = typed(key, required, [](const json& j) { return j.is_number(); }, "a number"))
      *out = v->get<double>();
  }
  void string(const char* key, std::string* out, bool required = false) const {
    if (const json* v = typed(key, required, [](const json& j) { return j.is_string(); }, "a string"))
      *out = v->get<std::string>();
  }
  void boolean(const char* key, bool* out) const {
    if (const json* v = typed(key, false, [](const json& j) { return j.is_boolean(); }, "true or false"))
      *out = v->get<bool>();
  }
  const json& object(const char* key) const {
    V4RT_REQUIRE(obj_[key].is_object(), where(key) << " must be an object, got " << obj_[key].dump());
    return obj_[key];
  }

 private:
  template <typename IsType>
  const json* typed(const char* key, bool required, IsType&& is_type, const char* type_text) const {
    if (!has(key)) {
      V4RT_REQUIRE(!required, where(key) << " is missing");
      return nullptr;
    }
    const json& v = obj_[key];
    V4RT_REQUIRE(is_type(v), where(key) << " must be " << type_text << ", got " << v.dump());
    return &v;
  }
  static bool is_integral_number(const json& v) {
    if (v.is_number_integer()) return true;
    if (!v.is_number_float()) return false;
    const double d = v.get<double>();  // tolerate 4.0 for 4
    return std::abs(d) < 9.0e18 && d == double(int64_t(d));  // range first: the cast of 1e300 is UB
  }

  const json& obj_;
  std::string source_;
  std::string prefix_;
};

// The reference code's own inference/config.json (spec §1.3) uses other names; it is recognised by
// `dim` and rewritten into the Hugging Face layout. Fields it lacks take the reference's defaults
// (n_mtp_layers = 1, fp8 e4m3 with 128x128 blocks).
json from_reference_names(const json& ref) {
  static const std::pair<const char*, const char*> kRenames[] = {
      {"dim", "hidden_size"},           {"moe_inter_dim", "moe_intermediate_size"},
      {"n_layers", "num_hidden_layers"}, {"n_hash_layers", "num_hash_layers"},
      {"n_heads", "num_attention_heads"}, {"n_activated_experts", "num_experts_per_tok"},
      {"score_func", "scoring_func"},   {"route_scale", "routed_scaling_factor"},
      {"window_size", "sliding_window"}, {"rope_head_dim", "qk_rope_head_dim"},
      {"n_mtp_layers", "num_nextn_predict_layers"}, {"norm_eps", "rms_norm_eps"},
  };
  json hf = json::object();
  json rope = {{"type", "yarn"}};
  json quant = json::object();
  for (auto it = ref.begin(); it != ref.end(); ++it) {
    const std::string& k = it.key();
    const auto* rename = std::find_if(std::begin(kRenames), std::end(kRenames),
                                      [&](const auto& r) { return k == r.first; });
    if (rename != std::end(kRenames)) {
      hf[rename->second] = it.value();
    } else if (k == "original_seq_len") {
      rope["original_max_position_embeddings"] = it.value();
    } else if (k == "rope_factor") {
      rope["factor"] = it.value();
    } else if (k == "beta_fast" || k == "beta_slow") {
      rope[k] = it.value();
    } else if (k == "dtype") {
      quant["quant_method"] = it.value();
    } else if (k == "scale_fmt") {
      quant["scale_fmt"] = it.value();
    } else {
      hf[k] = it.value();
    }
  }
  if (!hf.contains("num_nextn_predict_layers")) hf["num_nextn_predict_layers"] = 1;
  hf["rope_scaling"] = rope;
  hf["quantization_config"] = quant;
  return hf;
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  V4RT_REQUIRE(json_depth_ok(json_text), source << ": JSON nests deeper than " << kMaxJsonDepth << " levels");
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number too large
    V4RT_FAIL(source << ": not valid JSON (" << e.what() << ")");
  }
  V4RT_REQUIRE(j.is_object(), source << ": top level is not a JSON object");
  if (j.contains("dim") && !j.contains("hidden_size")) j = from_reference_names(j);
  ModelConfig c;
  FieldReader r(j, source);

  if (r.has("architectures")) {
    const json& a = j["architectures"];
    V4RT_REQUIRE(a.is_array() && !a.empty() && a[0].is_string(),
                 r.where("architectures") << " must be a non-empty list of strings");
    c.architecture = a[0].get<std::string>();
  }
  r.string("model_type", &c.model_type);
  r.integer("vocab_size", &c.vocab_size, true);
  r.integer("hidden_size", &c.hidden_size, true);
  r.integer("num_hidden_layers", &c.num_hidden_layers, true);
  r.integer("num_attention_heads", &c.num_attention_heads, true);
  r.integer("num_key_value_heads", &c.num_key_value_heads, false);
  r.integer("head_dim", &c.head_dim, true);
  r.integer("qk_rope_head_dim", &c.qk_rope_head_dim, true);
  r.integer("q_lora_rank", &c.q_lora_rank, true);
  r.integer("o_groups", &c.o_groups, true);
  r.integer("o_lora_rank", &c.o_lora_rank, true);
  r.integer("sliding_window", &c.sliding_window, false);
  r.number("compress_rope_theta", &c.compress_rope_theta);
  r.number("rope_theta", &c.rope_theta);
  r.integer("max_position_embeddings", &c.max_position_embeddings, false);
  r.integer("index_n_heads", &c.index_n_heads, true);
  r.integer("index_head_dim", &c.index_head_dim, true);
  r.integer("index_topk", &c.index_topk, true);
  r.integer("n_routed_experts", &c.n_routed_experts, true);
  r.integer("n_shared_experts", &c.n_shared_experts, false);
  r.integer("num_experts_per_tok", &c.num_experts_per_tok, true);
  r.integer("moe_intermediate_size", &c.moe_intermediate_size, true);
  r.integer("num_hash_layers", &c.num_hash_layers, false);
  r.string("scoring_func", &c.scoring_func);
  r.string("topk_method", &c.topk_method);
  r.boolean("norm_topk_prob", &c.norm_topk_prob);
  r.number("routed_scaling_factor", &c.routed_scaling_factor);
  r.number("swiglu_limit", &c.swiglu_limit);
  r.string("hidden_act", &c.hidden_act);
  r.integer("hc_mult", &c.hc_mult, false);
  r.integer("hc_sinkhorn_iters", &c.hc_sinkhorn_iters, false);
  r.number("hc_eps", &c.hc_eps);
  r.number("rms_norm_eps", &c.rms_norm_eps);
  r.integer("num_nextn_predict_layers", &c.num_nextn_predict_layers, false);
  r.boolean("tie_word_embeddings", &c.tie_word_embeddings);
  r.integer("bos_token_id", &c.bos_token_id, false);
  r.integer("eos_token_id", &c.eos_token_id, false);
  r.string("torch_dtype", &c.torch_dtype);
  r.string("expert_dtype", &c.quant.expert_dtype);

  V4RT_REQUIRE(r.has("compress_ratios"), r.where("compress_ratios") << " is missing");
  const json& ratios = j["compress_ratios"];
  V4RT_REQUIRE(ratios.is_array(), r.where("compress_ratios") << " must be a list of integers");
  for (size_t i = 0; i < ratios.size(); ++i) {
    V4RT_REQUIRE(fits_int(ratios[i]),
                 r.where("compress_ratios") << " entry " << i << " must be an integer, got " << ratios[i].dump());
    c.compress_ratios.push_back(ratios[i].get<int>());
  }

  if (r.has("rope_scaling")) {
    FieldReader rs(r.object("rope_scaling"), source, "rope_scaling.");
    if (rs.has("type")) {
      rs.string("type", &c.rope_scaling.type);
    } else {
      rs.string("rope_type", &c.rope_scaling.type);
    }
    rs.number("factor", &c.rope_scaling.factor);
    rs.number("beta_fast", &c.rope_scaling.beta_fast);
    rs.number("beta_slow", &c.rope_scaling.beta_slow);
    rs.integer("original_max_position_embeddings", &c.rope_scaling.original_max_position_embeddings, false);
  }
  if (r.has("quantization_config")) {
    FieldReader q(r.object("quantization_config"), source, "quantization_config.");
    q.string("quant_method", &c.quant.quant_method);
    q.string("fmt", &c.quant.fmt);
    q.string("activation_scheme", &c.quant.activation_scheme);
    q.string("scale_fmt", &c.quant.scale_fmt);
    const json& qj = j["quantization_config"];
    if (qj.contains("weight_block_size")) {
      const json& b = qj["weight_block_size"];
      V4RT_REQUIRE(b.is_array() && b.size() == 2 && fits_int(b[0]) && fits_int(b[1]),
                   q.where("weight_block_size") << " must be two integers, got " << b.dump());
      c.quant.weight_block_size[0] = b[0].get<int>();
      c.quant.weight_block_size[1] = b[1].get<int>();
    }
  }
  validate(c, source);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  V4RT_REQUIRE(in, path << ": cannot open model config");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path);
}

void validate(const ModelConfig& c, const std::string& source) {
  auto field = [&](const char* name) { return source + ": field '" + name + "'"; };
  auto positive = [&](const char* name, int64_t v) { V4RT_REQUIRE(v > 0, field(name) << " must be > 0, got " << v); };
  // Sizes are bounded by the largest release config (V4-Pro) times a margin, before anything is
  // sized from them: a config.json with n_routed_experts 1e6 must fail here, not in a 3 GB
  // allocation (or std::bad_alloc) while the tensor list is built.
  for (const SizeBound& b : size_bounds(c))
    V4RT_REQUIRE(b.value <= b.max, field(b.key) << " is " << b.value << "; at most " << b.max
                                                << " is accepted (the largest release config has " << b.release << ")");
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("head_dim", c.head_dim);
  positive("q_lora_rank", c.q_lora_rank);
  positive("o_groups", c.o_groups);
  positive("o_lora_rank", c.o_lora_rank);
  positive("sliding_window", c.sliding_window);
  positive("n_routed_experts", c.n_routed_experts);
  positive("num_experts_per_tok", c.num_experts_per_tok);
  positive("moe_intermediate_size", c.moe_intermediate_size);
  positive("hc_mult", c.hc_mult);
  positive("max_position_embeddings", c.max_position_embeddings);
  V4RT_REQUIRE(c.num_key_value_heads == 1,
               field("num_key_value_heads") << " must be 1 (one shared latent KV head), got " << c.num_key_value_heads);
  V4RT_REQUIRE(c.qk_rope_head_dim > 0 && c.qk_rope_head_dim < c.head_dim && c.qk_rope_head_dim % 2 == 0,
               field("qk_rope_head_dim") << " must be even and in (0, head_dim " << c.head_dim << "), got "
                                         << c.qk_rope_head_dim);
  V4RT_REQUIRE(c.num_attention_heads % c.o_groups == 0,
               field("o_groups") << " " << c.o_groups << " must divide num_attention_heads " << c.num_attention_heads);
  V4RT_REQUIRE(c.num_nextn_predict_layers >= 0,
               field("num_nextn_predict_layers") << " must be >= 0, got " << c.num_nextn_predict_layers);
  const size_t want = size_t(int64_t(c.num_hidden_layers) + c.num_nextn_predict_layers);  // no int overflow
  V4RT_REQUIRE(c.compress_ratios.size() == want,
               field("compress_ratios") << " has " << c.compress_ratios.size() << " entries, expected " << want
                                        << " (num_hidden_layers " << c.num_hidden_layers
                                        << " + num_nextn_predict_layers " << c.num_nextn_predict_layers << ")");
  bool any_csa = false;
  for (size_t i = 0; i < c.compress_ratios.size(); ++i) {
    const int r = c.compress_ratios[i];
    V4RT_REQUIRE(r == 0 || r == 4 || r == 128,
                 field("compress_ratios") << " entry " << i << " is " << r << "; only 0, 4 and 128 exist in V4");
    any_csa |= r == 4;
  }
  if (any_csa) {
    positive("index_n_heads", c.index_n_heads);
    positive("index_head_dim", c.index_head_dim);
    positive("index_topk", c.index_topk);
  }
  V4RT_REQUIRE(c.num_experts_per_tok <= c.n_routed_experts,
               field("num_experts_per_tok") << " " << c.num_experts_per_tok << " exceeds n_routed_experts "
                                            << c.n_routed_experts);
  V4RT_REQUIRE(c.n_shared_experts >= 0, field("n_shared_experts") << " must be >= 0");
  V4RT_REQUIRE(c.num_hash_layers >= 0 && c.num_hash_layers <= c.num_hidden_layers,
               field("num_hash_layers") << " " << c.num_hash_layers << " must be in [0, num_hidden_layers "
                                        << c.num_hidden_layers << "]");
  V4RT_REQUIRE(c.quant.expert_dtype == "fp4" || c.quant.expert_dtype == "fp8",
               field("expert_dtype") << " must be \"fp4\" or \"fp8\", got \"" << c.quant.expert_dtype << "\"");
  if (c.quant.expert_dtype == "fp4") {
    V4RT_REQUIRE(c.hidden_size % 32 == 0 && c.moe_intermediate_size % 32 == 0,
                 field("moe_intermediate_size") << " and hidden_size must be multiples of 32 for FP4 experts");
  }
  V4RT_REQUIRE(c.quant.quant_method == "fp8",
               field("quantization_config.quant_method") << " must be \"fp8\", got \"" << c.quant.quant_method << "\"");
  V4RT_REQUIRE(c.quant.fmt == "e4m3", field("quantization_config.fmt") << " must be \"e4m3\", got \"" << c.quant.fmt << "\"");
  V4RT_REQUIRE(c.quant.scale_fmt == "ue8m0",
               field("quantization_config.scale_fmt") << " must be \"ue8m0\", got \"" << c.quant.scale_fmt << "\"");
  V4RT_REQUIRE(c.quant.weight_block_size[0] == 128 && c.quant.weight_block_size[1] == 128,
               field("quantization_config.weight_block_size") << " must be [128, 128], got ["
                                                              << c.quant.weight_block_size[0] << ", "
                                                              << c.quant.weight_block_size[1] << "]");
  V4RT_REQUIRE(c.rope_scaling.type == "yarn",
               field("rope_scaling.type") << " must be \"yarn\", got \"" << c.rope_scaling.type << "\"");
  V4RT_REQUIRE(c.rope_scaling.factor >= 1.0, field("rope_scaling.factor") << " must be >= 1");
  V4RT_REQUIRE(c.scoring_func == "sqrtsoftplus" || c.scoring_func == "softmax" || c.scoring_func == "sigmoid",
               field("scoring_func") << " \"" << c.scoring_func << "\" is not one of sqrtsoftplus, softmax, sigmoid");
  V4RT_REQUIRE(c.hidden_act == "silu", field("hidden_act") << " must be \"silu\", got \"" << c.hidden_act << "\"");
  V4RT_REQUIRE(c.rms_norm_eps > 0 && c.hc_eps > 0, field("rms_norm_eps") << " and hc_eps must be > 0");
  V4RT_REQUIRE(c.hc_sinkhorn_iters >= 1, field("hc_sinkhorn_iters") << " must be >= 1");
  V4RT_REQUIRE(!c.tie_word_embeddings, field("tie_word_embeddings") << " must be false (V4 has a separate head)");
}

std::vector<SizeBound> size_bounds(const ModelConfig& c) {
  auto bound = [](const char* key, int64_t value, int64_t release) {
    int64_t max = 1;
    while (max < release * 8) max <<= 1;
    return SizeBound{key, value, release, max};
  };
  // V4-Pro's config.json (model/presets.cpp "pro"), or V4-Flash's where it is larger.
  return {
      bound("vocab_size", c.vocab_size, 129280),
      bound("hidden_size", c.hidden_size, 7168),
      bound("num_hidden_layers", c.num_hidden_layers, 61),
      bound("num_attention_heads", c.num_attention_heads, 128),
      bound("head_dim", c.head_dim, 512),
      bound("q_lora_rank", c.q_lora_rank, 1536),
      bound("o_groups", c.o_groups, 16),
      bound("o_lora_rank", c.o_lora_rank, 1024),
      bound("sliding_window", c.sliding_window, 128),
      bound("max_position_embeddings", c.max_position_embeddings, 1048576),
      bound("rope_scaling.original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings, 65536),
      bound("index_n_heads", c.index_n_heads, 64),
      bound("index_head_dim", c.index_head_dim, 128),
      bound("index_topk", c.index_topk, 1024),
      bound("n_routed_experts", c.n_routed_experts, 384),
      bound("n_shared_experts", c.n_shared_experts, 1),
      bound("num_experts_per_tok", c.num_experts_per_tok, 6),
      bound("moe_intermediate_size", c.moe_intermediate_size, 3072),
      bound("hc_mult", c.hc_mult, 4),
      bound("hc_sinkhorn_iters", c.hc_sinkhorn_iters, 20),
      bound("num_nextn_predict_layers", c.num_nextn_predict_layers, 1),
  };
}

std::string model_config_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["q_lora_rank"] = c.q_lora_rank;
  j["o_groups"] = c.o_groups;
  j["o_lora_rank"] = c.o_lora_rank;
  j["sliding_window"] = c.sliding_window;
  j["compress_ratios"] = c.compress_ratios;
  j["compress_rope_theta"] = c.compress_rope_theta;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = {{"type", c.rope_scaling.type},
                       {"factor", c.rope_scaling.factor},
                       {"beta_fast", c.rope_scaling.beta_fast},
                       {"beta_slow", c.rope_scaling.beta_slow},
                       {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["index_n_heads"] = c.index_n_heads;
  j["index_head_dim"] = c.index_head_dim;
  j["index_topk"] = c.index_topk;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["num_hash_layers"] = c.num_hash_layers;
  j["scoring_func"] = c.scoring_func;
  j["topk_method"] = c.topk_method;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["swiglu_limit"] = c.swiglu_limit;
  j["hidden_act"] = c.hidden_act;
  j["hc_mult"] = c.hc_mult;
  j["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  j["hc_eps"] = c.hc_eps;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["quantization_config"] = {{"quant_method", c.quant.quant_method},
                              {"fmt", c.quant.fmt},
                              {"activation_scheme", c.quant.activation_scheme},
                              {"scale_fmt", c.quant.scale_fmt},
                              {"weight_block_size", {c.quant.weight_block_size[0], c.quant.weight_block_size[1]}}};
  j["expert_dtype"] = c.quant.expert_dtype;
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(1) + "\n";
}

}  // namespace v4rt::model
