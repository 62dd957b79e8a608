// SPDX-License-Identifier: MIT
// Parameter loading: maps checkpoint tensors (official names, spec §9) to backend WeightViews, and
// builds the per-layer RoPE frequency tables.
#include "model/weights.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "common/check.h"

namespace v4rt::model {

namespace {

// The progress unit a checkpoint tensor belongs to (LoadProgress::unit).
std::string unit_of(const std::string& name) {
  if (name.rfind("layers.", 0) == 0 || name.rfind("mtp.", 0) == 0) {
    const size_t dot = name.find('.', name.find('.') + 1);  // "layers.7" of "layers.7.attn..."
    return name.substr(0, dot);
  }
  if (name == "embed.weight") return "embed";
  return "head";  // head.weight, norm.weight, hc_head_*
}

class Loader {
 public:
  Loader(const Checkpoint& ckpt, kernels::Backend& backend, const LoadObserver& observer = {})
      : ckpt_(ckpt), backend_(backend), observer_(observer), start_(std::chrono::steady_clock::now()) {
    if (!observer_) return;
    for (const auto& [name, info] : ckpt_.tensors()) unit_bytes_[unit_of(name)] += info.bytes;
  }

  // `name` is the full tensor name ("....weight" for quantized tensors, whose ".scale" is found
  // beside it). Failures name the tensor and its shard file: a load of hundreds of GB is long, and
  // the error must say which file to check.
  WeightView load(const std::string& name, int64_t row_begin = 0, int64_t row_end = -1) {
    try {
      return load_rows(name, row_begin, row_end);
    } catch (const std::exception& e) {
      fail(name, e);
    }
  }
  WeightView load_cols(const std::string& name, int64_t col_begin, int64_t col_end) {
    try {
      return load_col_slice(name, col_begin, col_end);
    } catch (const std::exception& e) {
      fail(name, e);
    }
  }

  uint64_t bytes() const { return bytes_; }

  // Progress: set_units() names the units of this load in order; unit_done() reports the next one
  // (with the bytes loaded and the shard files read since the previous) to the observer.
  void set_units(std::vector<std::string> units) {
    units_ = std::move(units);
    total_bytes_ = 0;
    for (const std::string& u : units_) total_bytes_ += unit_bytes_[u];
  }
  void unit_done(const std::string& unit) {
    if (!observer_) return;
    done_bytes_ += unit_bytes_[unit];
    LoadProgress p;
    p.unit = unit;
    for (const std::string& f : unit_files_) p.shards += (p.shards.empty() ? "" : ", ") + f;
    p.unit_index = ++units_done_;
    p.num_units = int(units_.size());
    p.unit_bytes = bytes_ - unit_start_bytes_;
    p.bytes = bytes_;
    p.done_fraction = total_bytes_ ? std::min(1.0, double(done_bytes_) / double(total_bytes_)) : 1.0;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    unit_files_.clear();
    unit_start_bytes_ = bytes_;
    observer_(p);
  }

 private:
  [[noreturn]] void fail(const std::string& name, const std::exception& e) const {
    std::string where = "not in the checkpoint";
    if (ckpt_.has(name)) where = "shard " + std::filesystem::path(ckpt_.info(name).file).filename().string();
    V4RT_FAIL("loading tensor " << name << " (" << where << "): " << e.what());
  }

  void note_file(const std::string& path) {
    const std::string f = std::filesystem::path(path).filename().string();
    if (std::find(unit_files_.begin(), unit_files_.end(), f) == unit_files_.end()) unit_files_.push_back(f);
  }

  WeightView load_rows(const std::string& name, int64_t row_begin, int64_t row_end) {
    kernels::WeightSource src = source(name);
    src.row_begin = row_begin;
    src.row_end = row_end;
    const int64_t rows = (row_end < 0 ? src.rows : row_end) - row_begin;
    bytes_ += uint64_t(rows) * row_bytes(src);
    return backend_.upload_weight(src);
  }

  // Columns [col_begin, col_end) of every row (a row-parallel weight's input slice, or a slice of
  // a 1-D tensor). FP8 stays FP8 when the slice holds whole 128-column scale blocks; otherwise it
  // is dequantized to F32 (exact: the values dequantization recovers).
  WeightView load_col_slice(const std::string& name, int64_t col_begin, int64_t col_end) {
    const kernels::WeightSource full = source(name);
    if (col_begin == 0 && (col_end < 0 || col_end == full.cols)) return load_rows(name, 0, -1);
    V4RT_REQUIRE(col_begin >= 0 && col_begin < col_end && col_end <= full.cols,
                 "tensor " << name << ": column range [" << col_begin << ", " << col_end << ") outside " << full.cols);
    const int64_t rows = full.rows, cols = col_end - col_begin;
    kernels::WeightSource src = full;
    src.cols = cols;
    std::vector<uint8_t> data, scale;
    const int64_t es = full.dtype == DType::kF8E4M3 ? 1 : int64_t(dtype_size(full.dtype));
    const bool fp8_blocks = full.dtype == DType::kF8E4M3 && col_begin % 128 == 0 && (col_end % 128 == 0 || col_end == full.cols);
    if (full.dtype == DType::kF32 || full.dtype == DType::kBF16 || fp8_blocks) {
      data.resize(size_t(rows * cols * es));
      const auto* in = static_cast<const uint8_t*>(full.data);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(&data[size_t(r * cols * es)], in + (r * full.cols + col_begin) * es, size_t(cols * es));
      if (fp8_blocks) {
        const int64_t srows = (rows + 127) / 128, scols_full = (full.cols + 127) / 128, scols = (cols + 127) / 128;
        scale.resize(size_t(srows * scols));
        for (int64_t r = 0; r < srows; ++r)
          std::memcpy(&scale[size_t(r * scols)], full.scale + r * scols_full + col_begin / 128, size_t(scols));
        src.scale = scale.data();
      }
      bytes_ += uint64_t(rows) * row_bytes(src);
    } else {
      V4RT_REQUIRE(full.dtype == DType::kF8E4M3,
                   "tensor " << name << ": column slices of " << dtype_name(full.dtype) << " are not supported");
      const std::vector<float> all = ckpt_.read_f32(name);
      data.resize(size_t(rows * cols) * sizeof(float));
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(&data[size_t(r * cols) * sizeof(float)], &all[size_t(r * full.cols + col_begin)], size_t(cols) * sizeof(float));
      src.dtype = DType::kF32;
      src.scale = nullptr;
      src.name = name + " (columns, dequantized)";
      // Counted as the FP8 bytes of the slice: the share of the stored weight this rank holds.
      bytes_ += uint64_t(rows * cols + ((rows + 127) / 128) * ((cols + 127) / 128));
    }
    src.data = data.data();
    return backend_.upload_weight(src);
  }

  kernels::WeightSource source(const std::string& name) {
    const TensorInfo& info = ckpt_.info(name);
    note_file(info.file);
    kernels::WeightSource src;
    src.name = name;
    src.dtype = info.dtype;
    src.data = info.data;
    src.rows = info.shape.size() >= 2 ? info.shape[0] : 1;
    src.cols = info.shape.empty() ? 1 : info.shape.back();
    if (info.shape.size() > 2) V4RT_FAIL("tensor " << name << ": expected at most 2 dims");
    if (info.dtype == DType::kF8E4M3 || info.dtype == DType::kI8) {
      const std::string base = name.substr(0, name.size() - std::string(".weight").size());
      const std::string scale_name = base + ".scale";  // named: `scale` refers into the checkpoint, not to it
      const TensorInfo& scale = ckpt_.info(scale_name);
      V4RT_REQUIRE(scale.dtype == DType::kF8E8M0, "tensor " << base << ".scale: expected F8_E8M0");
      src.scale = scale.data;
      if (info.dtype == DType::kI8) {  // packed FP4 e2m1, two per byte
        src.dtype = DType::kFP4;
        src.cols = info.shape.back() * 2;
      }
    }
    return src;
  }

  // Stored bytes per row of a source, scales included (FP8: one e8m0 per 128x128 block, counted
  // per row as cols/128/128; FP4: cols/2 bytes + one e8m0 per 32 columns).
  static double row_bytes_f(const kernels::WeightSource& s) {
    switch (s.dtype) {
      case DType::kF8E4M3: return double(s.cols) + double((s.cols + 127) / 128) / 128.0;
      case DType::kFP4: return double(s.cols) / 2.0 + double(s.cols) / 32.0;
      default: return double(s.cols) * double(dtype_size(s.dtype));
    }
  }
  static uint64_t row_bytes(const kernels::WeightSource& s) { return uint64_t(std::llround(row_bytes_f(s))); }

  const Checkpoint& ckpt_;
  kernels::Backend& backend_;
  uint64_t bytes_ = 0;
  // Progress (only with an observer).
  LoadObserver observer_;
  std::chrono::steady_clock::time_point start_;
  std::map<std::string, uint64_t> unit_bytes_;  // checkpoint tensor bytes per unit
  std::vector<std::string> units_;
  uint64_t total_bytes_ = 0, done_bytes_ = 0, unit_start_bytes_ = 0;
  int units_done_ = 0;
  std::vector<std::string> unit_files_;         // shard files of the unit being loaded
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

// The slice of every layer a shard holds (heads, groups, indexer heads, experts).
struct ShardRanges {
  int64_t h0, h1, g0, g1, i0, i1;
  int expert_begin, expert_end;
};

// One transformer block under `p` ("layers.7." or "mtp.0."), layer index `l`, sliced per `r`.
LayerWeights load_layer(Loader& ld, const ModelConfig& cfg, const ShardRanges& r,
                        const std::string& p, int l, bool hash_routed) {
  const int64_t hd = cfg.head_dim;
  const int64_t h0 = r.h0, h1 = r.h1, g0 = r.g0, g1 = r.g1, i0 = r.i0, i1 = r.i1;
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
  a.wq_b = ld.load(p + "attn.wq_b.weight", h0 * hd, h1 * hd);
  a.wkv = ld.load(p + "attn.wkv.weight");
  a.kv_norm = ld.load(p + "attn.kv_norm.weight");
  a.wo_a = ld.load(p + "attn.wo_a.weight", g0 * cfg.o_lora_rank, g1 * cfg.o_lora_rank);
  a.wo_b = ld.load_cols(p + "attn.wo_b.weight", g0 * cfg.o_lora_rank, g1 * cfg.o_lora_rank);
  a.sink = ld.load_cols(p + "attn.attn_sink", h0, h1);
  if (lw.ratio != 0) {
    a.has_compressor = true;
    a.compressor = load_compressor(ld, p + "attn.compressor.", lw.ratio, cfg.head_dim);
  }
  if (lw.ratio == 4) {
    a.has_indexer = true;
    a.indexer.wq_b = ld.load(p + "attn.indexer.wq_b.weight", i0 * cfg.index_head_dim, i1 * cfg.index_head_dim);
    a.indexer.weights_proj = ld.load(p + "attn.indexer.weights_proj.weight", i0, i1);
    a.indexer.compressor = load_compressor(ld, p + "attn.indexer.compressor.", 4, cfg.index_head_dim);
  }
  MoeWeights& m = lw.moe;
  m.gate = ld.load(p + "ffn.gate.weight");
  if (hash_routed) {
    m.tid2eid = ld.load(p + "ffn.gate.tid2eid");
  } else {
    m.bias = ld.load(p + "ffn.gate.bias");
  }
  m.w1.resize(size_t(cfg.n_routed_experts));
  m.w2.resize(size_t(cfg.n_routed_experts));
  m.w3.resize(size_t(cfg.n_routed_experts));
  m.expert_begin = r.expert_begin;
  m.expert_end = r.expert_end;
  for (int e = r.expert_begin; e < r.expert_end; ++e) {
    const std::string ep = p + "ffn.experts." + std::to_string(e) + ".";
    m.w1[size_t(e)] = ld.load(ep + "w1.weight");
    m.w2[size_t(e)] = ld.load(ep + "w2.weight");
    m.w3[size_t(e)] = ld.load(ep + "w3.weight");
  }
  m.shared_w1 = ld.load(p + "ffn.shared_experts.w1.weight");
  m.shared_w2 = ld.load(p + "ffn.shared_experts.w2.weight");
  m.shared_w3 = ld.load(p + "ffn.shared_experts.w3.weight");
  return lw;
}

// The shard's ranges, validated against the model.
ShardRanges shard_ranges(const ModelConfig& cfg, const Shard& shard) {
  auto end_or = [](int end, int all) { return end < 0 ? all : end; };
  const int expert_end = end_or(shard.expert_end, cfg.n_routed_experts);
  const int64_t h0 = shard.head_begin, h1 = end_or(shard.head_end, cfg.num_attention_heads);
  const int64_t g0 = shard.group_begin, g1 = end_or(shard.group_end, cfg.o_groups);
  const int64_t i0 = shard.index_head_begin, i1 = end_or(shard.index_head_end, cfg.index_n_heads);
  V4RT_REQUIRE(0 <= h0 && h0 < h1 && h1 <= cfg.num_attention_heads && 0 <= g0 && g0 < g1 && g1 <= cfg.o_groups &&
                   0 <= i0 && i0 < i1 && i1 <= cfg.index_n_heads && 0 <= shard.expert_begin &&
                   shard.expert_begin <= expert_end && expert_end <= cfg.n_routed_experts,
               "shard outside the model: heads [" << h0 << ", " << h1 << "), groups [" << g0 << ", " << g1
                                                  << "), indexer heads [" << i0 << ", " << i1 << "), experts ["
                                                  << shard.expert_begin << ", " << expert_end << ")");
  // The heads of a shard must be exactly the heads of its output groups (the grouped projection).
  const int64_t heads_per_group = cfg.num_attention_heads / cfg.o_groups;
  V4RT_REQUIRE(h0 == g0 * heads_per_group && h1 == g1 * heads_per_group,
               "shard heads [" << h0 << ", " << h1 << ") are not the heads of groups [" << g0 << ", " << g1 << ")");
  return ShardRanges{h0, h1, g0, g1, i0, i1, shard.expert_begin, expert_end};
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

ModelWeights load_weights(const Checkpoint& ckpt, kernels::Backend& backend, const Shard& shard,
                          const LoadObserver& observer) {
  const ModelConfig& cfg = ckpt.config();
  Loader ld(ckpt, backend, observer);
  std::vector<std::string> units = {"embed", "head"};
  for (int l = 0; l < cfg.num_hidden_layers; ++l) units.push_back("layers." + std::to_string(l));
  ld.set_units(units);
  const ShardRanges ranges = shard_ranges(cfg, shard);
  ModelWeights w;
  w.embed = ld.load("embed.weight");
  ld.unit_done("embed");
  w.head = ld.load("head.weight");
  w.norm = ld.load("norm.weight");
  w.hc_head = {ld.load("hc_head_fn"), ld.load("hc_head_base"), ld.load("hc_head_scale")};
  ld.unit_done("head");
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    w.layers.push_back(load_layer(ld, cfg, ranges, "layers." + std::to_string(l) + ".", l, cfg.is_hash_layer(l)));
    ld.unit_done(units[size_t(l) + 2]);
  }
  w.bytes_loaded = ld.bytes();
  return w;
}

MtpWeights load_mtp_weights(const Checkpoint& ckpt, kernels::Backend& backend, const Shard& shard,
                            const LoadObserver& observer) {
  const ModelConfig& cfg = ckpt.config();
  V4RT_REQUIRE(cfg.num_nextn_predict_layers >= 1,
               "checkpoint has no MTP block (num_nextn_predict_layers = " << cfg.num_nextn_predict_layers << ")");
  const int layer = cfg.num_hidden_layers;  // the MTP block's layer index (spec §7)
  V4RT_REQUIRE(cfg.compress_ratio(layer) == 0,
               "MTP block: compress_ratios[" << layer << "] is " << cfg.compress_ratio(layer) << ", expected 0 (window only)");
  Loader ld(ckpt, backend, observer);
  ld.set_units({"mtp.0"});
  const std::string p = "mtp.0.";
  MtpWeights w;
  w.block = load_layer(ld, cfg, shard_ranges(cfg, shard), p, layer, /*hash_routed=*/false);
  w.e_proj = ld.load(p + "e_proj.weight");
  w.h_proj = ld.load(p + "h_proj.weight");
  w.enorm = ld.load(p + "enorm.weight");
  w.hnorm = ld.load(p + "hnorm.weight");
  w.norm = ld.load(p + "norm.weight");
  w.hc_head = {ld.load(p + "hc_head_fn"), ld.load(p + "hc_head_base"), ld.load(p + "hc_head_scale")};
  ld.unit_done("mtp.0");
  w.bytes_loaded = ld.bytes();
  return w;
}

}  // namespace v4rt::model
