// SPDX-License-Identifier: MIT
// Synthetic checkpoints (see synthetic.h). Every tensor draws from its own generator, seeded by
// (seed, tensor name), so the bytes of a tensor do not depend on which other tensors exist or on
// the order they are written in.
#include "model/synthetic.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "common/check.h"
#include "common/dtype.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace v4rt::model {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Quantization recipes (make_golden.py: pow2_scale, quant_fp8_block, quant_fp4)
// ---------------------------------------------------------------------------------------------

namespace {

// 2^ceil(log2(amax / qmax)), or 1 for an all-zero block; returned as its ue8m0 code.
uint8_t pow2_scale_code(float amax, float qmax) {
  if (!(amax > 0.0f)) return 127;
  const double s = double(amax) / double(qmax);
  int e = int(std::ceil(std::log2(s)));
  if (std::ldexp(1.0, e - 1) >= s) --e;  // guard log2 rounding up on exact powers of two
  if (std::ldexp(1.0, e) < s) ++e;
  return uint8_t(std::clamp(e + 127, 0, 254));
}

constexpr float kE2M1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// Nearest e2m1 magnitude, ties to the lower code (torch argmin returns the first minimum).
uint8_t fp4_code(float x) {
  const float a = std::fabs(x);
  uint8_t best = 0;
  float best_d = std::fabs(a - kE2M1[0]);
  for (uint8_t m = 1; m < 8; ++m) {
    const float d = std::fabs(a - kE2M1[m]);
    if (d < best_d) {
      best_d = d;
      best = m;
    }
  }
  return (x < 0.0f && best > 0) ? uint8_t(best | 8) : best;
}

}  // namespace

void quantize_fp8_block(const float* w, int64_t rows, int64_t cols, uint8_t* q, uint8_t* scale) {
  const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
  for (int64_t i = 0; i < br; ++i) {
    for (int64_t j = 0; j < bc; ++j) {
      const int64_t r_end = std::min(rows, (i + 1) * 128), c_end = std::min(cols, (j + 1) * 128);
      float amax = 0.0f;
      for (int64_t r = i * 128; r < r_end; ++r)
        for (int64_t c = j * 128; c < c_end; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      const uint8_t code = pow2_scale_code(amax, 448.0f);
      scale[i * bc + j] = code;
      const float inv = 1.0f / e8m0_to_f32(code);  // exact: a power of two
      for (int64_t r = i * 128; r < r_end; ++r)
        for (int64_t c = j * 128; c < c_end; ++c) q[r * cols + c] = f32_to_e4m3(w[r * cols + c] * inv);
    }
  }
}

void quantize_fp4(const float* w, int64_t rows, int64_t cols, uint8_t* packed, uint8_t* scale) {
  CHECK_EQ(cols % 32, 0) << "FP4 rows must be a multiple of 32 wide";
  const int64_t groups = cols / 32;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = w + r * cols + g * 32;
      float amax = 0.0f;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[k]));
      const uint8_t code = pow2_scale_code(amax, 6.0f);
      scale[r * groups + g] = code;
      const float inv = 1.0f / e8m0_to_f32(code);
      uint8_t* out = packed + r * (cols / 2) + g * 16;
      for (int k = 0; k < 16; ++k)
        out[k] = uint8_t(fp4_code(x[2 * k] * inv) | (fp4_code(x[2 * k + 1] * inv) << 4));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Random values
// ---------------------------------------------------------------------------------------------

namespace {

class Rng {  // splitmix64 + Box-Muller: portable, so files are identical on every platform
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  float normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform(), u2 = uniform();
    const double rad = std::sqrt(-2.0 * std::log(u1)), ang = 2.0 * M_PI * u2;
    spare_ = float(rad * std::sin(ang));
    has_spare_ = true;
    return float(rad * std::cos(ang));
  }

 private:
  uint64_t state_;
  float spare_ = 0.0f;
  bool has_spare_ = false;
};

uint64_t tensor_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  return h ^ (seed * 0x9e3779b97f4a7c15ull);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Draws `n` values of tensor `name` (whose last dimension is `last_dim`) in order; called
// repeatedly to stream large tensors. Mirrors make_golden.py's randomize().
class ValueSource {
 public:
  ValueSource(uint64_t seed, const std::string& name, int64_t last_dim, int ndim)
      : rng_(tensor_seed(seed, name)) {
    const bool hc = name.find("hc_") != std::string::npos;
    if (ends_with(name, "norm.weight")) {
      mul_ = 0.2f, add_ = 1.0f;
    } else if (ends_with(name, "attn_sink") || name == "embed.weight") {
      mul_ = 1.0f;
    } else if (ends_with(name, "compressor.ape")) {
      mul_ = 0.5f;
    } else if (hc && ends_with(name, "_scale")) {
      uniform_ = true, mul_ = 1.0f, add_ = 0.5f;
    } else if (hc && ends_with(name, "_base")) {
      mul_ = 0.5f;
    } else if (hc && ends_with(name, "_fn")) {
      mul_ = float(4.0 / std::sqrt(double(last_dim)));
    } else if (ends_with(name, "gate.bias")) {
      mul_ = 0.1f;
    } else if (ndim >= 2) {
      mul_ = float(1.0 / std::sqrt(double(last_dim)));
    } else {
      mul_ = 0.1f;
    }
  }
  void fill(float* out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = add_ + mul_ * (uniform_ ? float(rng_.uniform()) : rng_.normal());
  }

 private:
  Rng rng_;
  float mul_ = 1.0f, add_ = 0.0f;
  bool uniform_ = false;
};

std::string shard_name(int i, int n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", i + 1, n);
  return buf;
}

// Quantized pairs are produced together when the first of the two is written and the other is
// held until its turn (scale and weight usually sit next to each other).
struct PairCache {
  std::map<std::string, std::vector<uint8_t>> pending;
};

void quantize_pair(const ModelConfig& config, uint64_t seed, const std::string& weight_name,
                   const ExpectedTensor& weight, PairCache* cache) {
  const bool fp4 = weight.dtype == DType::kI8;
  const int64_t rows = weight.shape[0], cols = fp4 ? 2 * weight.shape[1] : weight.shape[1];
  std::vector<float> w(size_t(rows * cols));
  ValueSource(seed, weight_name, cols, 2).fill(w.data(), w.size());
  const std::string base = weight_name.substr(0, weight_name.size() - std::string(".weight").size());
  std::vector<uint8_t> q, s;
  if (fp4) {
    q.resize(size_t(rows * cols / 2));
    s.resize(size_t(rows * cols / 32));
    quantize_fp4(w.data(), rows, cols, q.data(), s.data());
  } else {
    q.resize(size_t(rows * cols));
    s.resize(size_t(((rows + 127) / 128) * ((cols + 127) / 128)));
    quantize_fp8_block(w.data(), rows, cols, q.data(), s.data());
  }
  (void)config;
  cache->pending[weight_name] = std::move(q);
  cache->pending[base + ".scale"] = std::move(s);
}

// Streams one tensor into `out`.
void emit_tensor(const ModelConfig& config, uint64_t seed, const std::string& name, const ExpectedTensor& t,
                 const std::map<std::string, ExpectedTensor>& all, PairCache* cache,
                 safetensors::StreamWriter* out) {
  auto pending = cache->pending.find(name);
  if (pending == cache->pending.end() && (t.dtype == DType::kF8E4M3 || t.dtype == DType::kI8 ||
                                          (t.dtype == DType::kF8E8M0 && ends_with(name, ".scale")))) {
    const std::string weight_name =
        t.dtype == DType::kF8E8M0 ? name.substr(0, name.size() - std::string(".scale").size()) + ".weight" : name;
    quantize_pair(config, seed, weight_name, all.at(weight_name), cache);
    pending = cache->pending.find(name);
  }
  if (pending != cache->pending.end()) {
    out->append(pending->second.data(), pending->second.size());
    cache->pending.erase(pending);
    return;
  }
  const int64_t last = t.shape.empty() ? 1 : t.shape.back();
  const uint64_t numel = safetensors::shape_numel(t.shape);
  if (t.dtype == DType::kI64) {  // gate.tid2eid: each token's experts, distinct, from a shuffle
    CHECK(ends_with(name, "gate.tid2eid")) << name;
    Rng rng(tensor_seed(seed, name));
    std::vector<int64_t> perm(static_cast<size_t>(config.n_routed_experts));
    std::vector<int64_t> row(static_cast<size_t>(last));
    for (int64_t r = 0; r < t.shape[0]; ++r) {
      std::iota(perm.begin(), perm.end(), 0);
      for (int64_t k = 0; k < last; ++k) {  // partial Fisher-Yates
        const int64_t j = k + int64_t(rng.next() % uint64_t(int64_t(perm.size()) - k));
        std::swap(perm[size_t(k)], perm[size_t(j)]);
        row[size_t(k)] = perm[size_t(k)];
      }
      out->append(row.data(), row.size() * 8);
    }
    return;
  }
  CHECK(t.dtype == DType::kF32 || t.dtype == DType::kBF16) << name << " " << dtype_name(t.dtype);
  ValueSource src(seed, name, last, int(t.shape.size()));
  constexpr uint64_t kChunk = uint64_t(1) << 20;
  std::vector<float> buf;
  std::vector<uint16_t> half;
  for (uint64_t done = 0; done < numel; done += kChunk) {
    const size_t n = size_t(std::min(kChunk, numel - done));
    buf.resize(n);
    src.fill(buf.data(), n);
    if (t.dtype == DType::kF32) {
      out->append(buf.data(), n * 4);
    } else {
      half.resize(n);
      for (size_t i = 0; i < n; ++i) half[i] = f32_to_bf16(buf[i]);
      out->append(half.data(), n * 2);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Checkpoint writer
// ---------------------------------------------------------------------------------------------

uint64_t write_synthetic_checkpoint(const ModelConfig& config, const std::string& dir, const SyntheticOptions& options) {
  validate(config, "synthetic config");
  V4RT_REQUIRE(options.num_shards >= 0, "synthetic checkpoint: num_shards must be >= 0");
  std::error_code ec;
  fs::create_directories(dir, ec);
  V4RT_REQUIRE(!ec, dir << ": cannot create directory (" << ec.message() << ")");

  const std::map<std::string, ExpectedTensor> all = expected_tensors(config);
  std::vector<std::string> names;
  for (const auto& [name, t] : all) names.push_back(name);  // std::map: sorted, as make_golden.py
  // shard file -> its tensors, in name order
  std::vector<std::pair<std::string, std::vector<std::string>>> shards;
  if (options.num_shards == 0) {
    std::map<std::string, std::vector<std::string>> placed;
    for (const std::string& n : names) placed[release_shard_name(config, n)].push_back(n);
    for (auto& [file, list] : placed) shards.emplace_back(file, std::move(list));
  } else {
    const int num_shards = std::min<int>(options.num_shards, int(names.size()));
    size_t begin = 0;
    for (int s = 0; s < num_shards; ++s) {
      const size_t end = names.size() * size_t(s + 1) / size_t(num_shards);
      shards.emplace_back(shard_name(s, num_shards), std::vector<std::string>(names.begin() + int64_t(begin),
                                                                              names.begin() + int64_t(end)));
      begin = end;
    }
  }

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total = 0;
  PairCache cache;
  for (const auto& [file, list] : shards) {
    std::vector<safetensors::TensorSpec> specs;
    for (const std::string& n : list) {
      specs.push_back({n, all.at(n).dtype, all.at(n).shape});
      weight_map[n] = file;
      total += specs.back().bytes();
    }
    safetensors::StreamWriter writer((fs::path(dir) / file).string(), specs);
    for (const std::string& n : list) emit_tensor(config, options.seed, n, all.at(n), all, &cache, &writer);
    writer.finish();
  }
  CHECK(cache.pending.empty()) << "synthetic: a quantized pair was split without both halves written";

  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  const auto write_text = [&](const std::string& file, const std::string& text) {
    const std::string path = (fs::path(dir) / file).string();
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    V4RT_REQUIRE(f, path << ": cannot open for writing");
    f << text;
    f.close();
    V4RT_REQUIRE(f, path << ": write failed");
  };
  write_text("model.safetensors.index.json", index.dump(1) + "\n");
  write_text("config.json", model_config_json(config));
  return total;
}

}  // namespace v4rt::model
