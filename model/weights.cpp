// SPDX-License-Identifier: MIT
// Parameter loading: maps checkpoint tensors (official names, spec §9) to backend WeightViews, and
// builds the per-layer RoPE frequency tables.
#include "model/weights.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace v4rt::model {

namespace {

class Loader {
 public:
  Loader(const Checkpoint& ckpt, kernels::Backend& backend) : ckpt_(ckpt), backend_(backend) {}

  // `name` without the ".weight"/".scale" suffix for quantized tensors; full name otherwise.
  WeightView load(const std::string& name, int64_t row_begin = 0, int64_t row_end = -1) {
    const TensorInfo& info = ckpt_.info(name);
    kernels::WeightSource src;
    src.name = name;
    src.dtype = info.dtype;
    src.data = info.data;
    src.rows = info.shape.size() >= 2 ? info.shape[0] : 1;
    src.cols = info.shape.empty() ? 1 : info.shape.back();
    if (info.shape.size() > 2) V4RT_FAIL("tensor " << name << ": expected at most 2 dims");
    if (info.dtype == DType::kF8E4M3 || info.dtype == DType::kI8) {
      const std::string base = name.substr(0, name.size() - std::string(".weight").size());
      const TensorInfo& scale = ckpt_.info(base + ".scale");
      V4RT_REQUIRE(scale.dtype == DType::kF8E8M0, "tensor " << base << ".scale: expected F8_E8M0");
      src.scale = scale.data;
      if (info.dtype == DType::kI8) {  // packed FP4 e2m1, two per byte
        src.dtype = DType::kFP4;
        src.cols = info.shape.back() * 2;
      }
    }
    src.row_begin = row_begin;
    src.row_end = row_end;
    return backend_.upload_weight(src);
  }

 private:
  const Checkpoint& ckpt_;
  kernels::Backend& backend_;
};

CompressorWeights load_compressor(Loader& ld, const std::string& p, int ratio, int head_dim) {
  CompressorWeights c;
  c.wkv = ld.load(p + "wkv.weight");
  c.wgate = ld.load(p + "wgate.weight");
  c.ape = ld.load(p + "ape");
  c.norm = ld.load(p + "norm.weight");
  c.ratio = ratio;
  c.head_dim = head_dim;
  c.overlap = ratio == 4;
  return c;
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& config, int ratio) {
  const int dim = config.qk_rope_head_dim;
  const int half = dim / 2;
  const double base = ratio == 0 ? config.rope_theta : config.compress_rope_theta;
  std::vector<float> f(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) f[size_t(i)] = float(1.0 / std::pow(base, double(2 * i) / double(dim)));
  if (ratio == 0) return f;
  const RopeScaling& ys = config.rope_scaling;
  const double orig = double(ys.original_max_position_embeddings);
  auto corr = [&](double rotations) {
    return double(dim) * std::log(orig / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
  };
  const double lo = std::max(std::floor(corr(ys.beta_fast)), 0.0);
  double hi = std::min(std::ceil(corr(ys.beta_slow)), double(dim - 1));
  if (lo == hi) hi += 0.001;
  for (int i = 0; i < half; ++i) {
    const double ramp = std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0);
    const double extrap = 1.0 / std::pow(base, double(2 * i) / double(dim));
    f[size_t(i)] = float(extrap / ys.factor * ramp + extrap * (1.0 - ramp));
  }
  return f;
}

ModelWeights load_weights(const Checkpoint& ckpt, kernels::Backend& backend, const Shard& shard) {
  const ModelConfig& cfg = ckpt.config();
  Loader ld(ckpt, backend);
  ModelWeights w;
  w.embed = ld.load("embed.weight");
  w.head = ld.load("head.weight");
  w.norm = ld.load("norm.weight");
  w.hc_head = {ld.load("hc_head_fn"), ld.load("hc_head_base"), ld.load("hc_head_scale")};
  const int expert_end = shard.expert_end < 0 ? cfg.n_routed_experts : shard.expert_end;
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights lw;
    lw.index = l;
    lw.ratio = cfg.compress_ratio(l);
    lw.inv_freq = rope_inv_freq(cfg, lw.ratio);
    lw.attn_norm = ld.load(p + "attn_norm.weight");
    lw.ffn_norm = ld.load(p + "ffn_norm.weight");
    lw.hc_attn = {ld.load(p + "hc_attn_fn"), ld.load(p + "hc_attn_base"), ld.load(p + "hc_attn_scale")};
    lw.hc_ffn = {ld.load(p + "hc_ffn_fn"), ld.load(p + "hc_ffn_base"), ld.load(p + "hc_ffn_scale")};
    AttentionWeights& a = lw.attn;
    a.wq_a = ld.load(p + "attn.wq_a.weight");
    a.q_norm = ld.load(p + "attn.q_norm.weight");
    a.wq_b = ld.load(p + "attn.wq_b.weight");
    a.wkv = ld.load(p + "attn.wkv.weight");
    a.kv_norm = ld.load(p + "attn.kv_norm.weight");
    a.wo_a = ld.load(p + "attn.wo_a.weight");
    a.wo_b = ld.load(p + "attn.wo_b.weight");
    a.sink = ld.load(p + "attn.attn_sink");
    if (lw.ratio != 0) {
      a.has_compressor = true;
      a.compressor = load_compressor(ld, p + "attn.compressor.", lw.ratio, cfg.head_dim);
    }
    if (lw.ratio == 4) {
      a.has_indexer = true;
      a.indexer.wq_b = ld.load(p + "attn.indexer.wq_b.weight");
      a.indexer.weights_proj = ld.load(p + "attn.indexer.weights_proj.weight");
      a.indexer.compressor = load_compressor(ld, p + "attn.indexer.compressor.", 4, cfg.index_head_dim);
    }
    MoeWeights& m = lw.moe;
    m.gate = ld.load(p + "ffn.gate.weight");
    if (cfg.is_hash_layer(l)) {
      m.tid2eid = ld.load(p + "ffn.gate.tid2eid");
    } else {
      m.bias = ld.load(p + "ffn.gate.bias");
    }
    m.w1.resize(size_t(cfg.n_routed_experts));
    m.w2.resize(size_t(cfg.n_routed_experts));
    m.w3.resize(size_t(cfg.n_routed_experts));
    m.expert_begin = shard.expert_begin;
    m.expert_end = expert_end;
    for (int e = shard.expert_begin; e < expert_end; ++e) {
      const std::string ep = p + "ffn.experts." + std::to_string(e) + ".";
      m.w1[size_t(e)] = ld.load(ep + "w1.weight");
      m.w2[size_t(e)] = ld.load(ep + "w2.weight");
      m.w3[size_t(e)] = ld.load(ep + "w3.weight");
    }
    m.shared_w1 = ld.load(p + "ffn.shared_experts.w1.weight");
    m.shared_w2 = ld.load(p + "ffn.shared_experts.w2.weight");
    m.shared_w3 = ld.load(p + "ffn.shared_experts.w3.weight");
    w.layers.push_back(std::move(lw));
  }
  return w;
}

}  // namespace v4rt::model
