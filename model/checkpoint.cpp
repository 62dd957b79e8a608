// SPDX-License-Identifier: MIT
// Checkpoint: opens config.json + model.safetensors.index.json + shards (or one model.safetensors),
// memory-maps every shard and validates its header at open, then dequantizes tensors on demand
// (spec §2.1). Opening touches only the headers; the tensor bytes a rank never reads are never
// paged in.
#include "model/checkpoint.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/check.h"
#include "common/json_depth.h"
#include "model/safetensors.h"

namespace v4rt::model {

namespace fs = std::filesystem;
using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

struct Checkpoint::Mapping {
  explicit Mapping(const std::string& path) : file(path) {}
  safetensors::MappedFile file;
};

// ---------------------------------------------------------------------------------------------
// Lookup tables (exact: built from the codecs in common/dtype)
// ---------------------------------------------------------------------------------------------

namespace {

struct Tables {
  std::array<float, 256> e4m3{};
  std::array<float, 256> e8m0{};
  std::array<float, 16> fp4{};
  Tables() {
    for (int i = 0; i < 256; ++i) {
      e4m3[size_t(i)] = e4m3_to_f32(uint8_t(i));
      e8m0[size_t(i)] = e8m0_to_f32(uint8_t(i));
    }
    for (int i = 0; i < 16; ++i) fp4[size_t(i)] = fp4_to_f32(uint8_t(i));
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

// Opening a FIFO (or a device) for reading can block forever; only regular files are read.
void require_regular_file(const fs::path& path, const char* what) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  V4RT_REQUIRE(fs::exists(st), path.string() << ": " << what << " is missing");
  V4RT_REQUIRE(fs::is_regular_file(st), path.string() << ": " << what << " is not a regular file");
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  V4RT_REQUIRE(in, path << ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "x.weight" -> "x.scale"; other names have no scale sibling.
std::string scale_name(const std::string& name) {
  static const std::string kWeight = ".weight";
  if (name.size() > kWeight.size() && name.compare(name.size() - kWeight.size(), kWeight.size(), kWeight) == 0)
    return name.substr(0, name.size() - kWeight.size()) + ".scale";
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Open
// ---------------------------------------------------------------------------------------------

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir) {
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  V4RT_REQUIRE(fs::is_directory(dir), dir << ": checkpoint directory does not exist");
  require_regular_file(fs::path(dir) / "config.json", "config.json");
  ck->config_ = load_model_config((fs::path(dir) / "config.json").string());

  // shard file name -> names the index maps to it (empty list for a single-file checkpoint)
  std::map<std::string, std::set<std::string>> shards;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const bool indexed = fs::exists(index_path);
  if (indexed) {
    const std::string ipath = index_path.string();
    require_regular_file(index_path, "the tensor index");
    const std::string itext = read_text(ipath);
    V4RT_REQUIRE(json_depth_ok(itext), ipath << ": JSON nests deeper than " << kMaxJsonDepth << " levels");
    json j;
    try {
      j = json::parse(itext);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number too large
      V4RT_FAIL(ipath << ": not valid JSON (" << e.what() << ")");
    }
    V4RT_REQUIRE(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                 ipath << ": no 'weight_map' object");
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      V4RT_REQUIRE(it.value().is_string(), ipath << ": tensor '" << it.key() << "' maps to a non-string shard");
      const std::string shard = it.value().get<std::string>();
      V4RT_REQUIRE(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
                   ipath << ": tensor '" << it.key() << "' maps to an invalid shard name '" << shard << "'");
      shards[shard].insert(it.key());
    }
    for (const auto& [shard, names] : shards) {
      const fs::path p = fs::path(dir) / shard;
      V4RT_REQUIRE(fs::exists(p), p.string() << ": shard file is missing (index maps " << names.size()
                                            << " tensors to it, e.g. '" << *names.begin() << "')");
      require_regular_file(p, "shard file");
    }
  } else {
    const fs::path single = fs::path(dir) / "model.safetensors";
    V4RT_REQUIRE(fs::exists(single), dir << ": neither model.safetensors.index.json nor model.safetensors exists");
    shards["model.safetensors"];
  }

  for (const auto& [shard, names] : shards) {
    const std::string path = (fs::path(dir) / shard).string();
    auto mapping = std::make_unique<Mapping>(path);
    const safetensors::MappedFile& f = mapping->file;
    const safetensors::Header h = safetensors::parse_header(f.data(), f.size(), f.size(), path);
    std::set<std::string> seen;
    for (const safetensors::Entry& e : h.entries) {
      if (indexed) {
        V4RT_REQUIRE(names.count(e.name), path << ": tensor '" << e.name << "' is in the shard but the index does not map it here");
      }
      V4RT_REQUIRE(!ck->tensors_.count(e.name), path << ": tensor '" << e.name << "' appears in two shards");
      TensorInfo t;
      t.name = e.name;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.file = path;
      t.offset = h.data_offset + e.begin;
      t.bytes = e.end - e.begin;
      t.data = f.data() + t.offset;
      ck->tensors_.emplace(e.name, std::move(t));
      seen.insert(e.name);
    }
    for (const std::string& n : names) {
      V4RT_REQUIRE(seen.count(n), path << ": tensor '" << n << "' is mapped to this shard by the index but the shard does not contain it");
    }
    ck->mappings_.push_back(std::move(mapping));
  }
  ck->validate_tensors();
  return ck;
}

Checkpoint::~Checkpoint() = default;

bool Checkpoint::has(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = tensors_.find(name);
  V4RT_REQUIRE(it != tensors_.end(), dir_ << ": tensor '" << name << "' is not in the checkpoint");
  return it->second;
}

std::vector<int64_t> Checkpoint::logical_shape(const std::string& name) const {
  const TensorInfo& t = info(name);
  std::vector<int64_t> shape = t.shape;
  const std::string sname = scale_name(name);
  if (t.dtype == DType::kI8 && !sname.empty() && has(sname) && !shape.empty()) shape.back() *= 2;
  return shape;
}

// ---------------------------------------------------------------------------------------------
// Validation against the expected tensor list
// ---------------------------------------------------------------------------------------------

void Checkpoint::validate_tensors() const {
  // The expected list holds an entry per expert weight and scale of every block; before it is
  // built, the shards must hold at least the expert weights the config implies (3 per expert and
  // block), so a config.json whose n_routed_experts the checkpoint cannot match fails at once.
  const int64_t blocks = int64_t(config_.num_hidden_layers) + config_.num_nextn_predict_layers;
  const int64_t expert_weights = int64_t(config_.n_routed_experts) * blocks * 3;
  V4RT_REQUIRE(expert_weights <= int64_t(tensors_.size()),
               dir_ << "/config.json: field 'n_routed_experts' " << config_.n_routed_experts << " implies "
                    << expert_weights << " expert weight tensors (" << blocks << " blocks x 3), but the checkpoint "
                    << "holds " << tensors_.size() << " tensors in all");
  const std::map<std::string, ExpectedTensor> want = expected_tensors(config_);
  std::vector<std::string> problems;
  for (const auto& [name, e] : want) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      problems.push_back("missing tensor '" + name + "' (" + std::string(dtype_name(e.dtype)) + " " +
                         safetensors::shape_str(e.shape) + ")");
      continue;
    }
    const TensorInfo& t = it->second;
    if (t.dtype != e.dtype || t.shape != e.shape) {
      problems.push_back(t.file + ": tensor '" + name + "' is " + std::string(dtype_name(t.dtype)) + " " +
                         safetensors::shape_str(t.shape) + ", expected " + std::string(dtype_name(e.dtype)) + " " +
                         safetensors::shape_str(e.shape));
    }
  }
  for (const auto& [name, t] : tensors_) {
    if (!want.count(name)) problems.push_back(t.file + ": unexpected tensor '" + name + "'");
  }
  if (problems.empty()) return;
  std::ostringstream os;
  os << dir_ << ": " << problems.size() << " tensor problem(s) against config.json:";
  for (const std::string& p : problems) os << "\n  " << p;
  V4RT_FAIL(os.str());
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

std::vector<float> Checkpoint::read_f32(const std::string& name, int64_t row_begin, int64_t row_end) const {
  const TensorInfo& t = info(name);
  const Tables& lut = tables();
  const int64_t rows = t.shape.empty() ? 1 : t.shape[0];
  const int64_t stored_cols = rows == 0 ? 0 : t.numel() / rows;  // elements per row as stored
  if (row_end < 0) row_end = rows;
  V4RT_REQUIRE(row_begin >= 0 && row_begin <= row_end && row_end <= rows,
               t.file << ": tensor '" << name << "': row range [" << row_begin << ", " << row_end
                      << ") outside [0, " << rows << ")");
  const int64_t n_rows = row_end - row_begin;
  const std::string sname = scale_name(name);
  const bool scaled = !sname.empty() && has(sname) && (t.dtype == DType::kF8E4M3 || t.dtype == DType::kI8);

  if (!scaled) {
    V4RT_REQUIRE(t.dtype != DType::kF8E4M3, t.file << ": tensor '" << name << "' is F8_E4M3 without a '" << sname
                                                   << "' scale tensor");
    std::vector<float> out(size_t(n_rows * stored_cols));
    const size_t esize = dtype_size(t.dtype);
    const uint8_t* src = t.data + size_t(row_begin * stored_cols) * esize;
    const size_t n = out.size();
    bytes_read_ += n * esize;
    switch (t.dtype) {
      case DType::kF32: std::memcpy(out.data(), src, n * 4); break;
      case DType::kBF16:
        for (size_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          out[i] = bf16_to_f32(h);
        }
        break;
      case DType::kF8E8M0:
        for (size_t i = 0; i < n; ++i) out[i] = lut.e8m0[src[i]];
        break;
      case DType::kI8:
        for (size_t i = 0; i < n; ++i) out[i] = float(int8_t(src[i]));
        break;
      case DType::kU8:
      case DType::kBool:
        for (size_t i = 0; i < n; ++i) out[i] = float(src[i]);
        break;
      case DType::kI32:
        for (size_t i = 0; i < n; ++i) {
          int32_t v;
          std::memcpy(&v, src + 4 * i, 4);
          out[i] = float(v);
        }
        break;
      case DType::kI64:
        for (size_t i = 0; i < n; ++i) {
          int64_t v;
          std::memcpy(&v, src + 8 * i, 8);
          out[i] = float(v);
        }
        break;
      case DType::kF64:
        for (size_t i = 0; i < n; ++i) {
          double v;
          std::memcpy(&v, src + 8 * i, 8);
          out[i] = float(v);
        }
        break;
      default: V4RT_FAIL(t.file << ": tensor '" << name << "': read_f32 does not support " << dtype_name(t.dtype));
    }
    return out;
  }

  const TensorInfo& s = info(sname);
  V4RT_REQUIRE(t.shape.size() == 2, t.file << ": tensor '" << name << "' is quantized but not 2-D "
                                           << safetensors::shape_str(t.shape));
  V4RT_REQUIRE(s.dtype == DType::kF8E8M0 && s.shape.size() == 2,
               s.file << ": tensor '" << sname << "' must be a 2-D F8_E8M0 scale, is " << dtype_name(s.dtype) << " "
                      << safetensors::shape_str(s.shape));
  const int64_t scale_cols = s.shape[1];

  if (t.dtype == DType::kF8E4M3) {  // 128x128 block scales, ceil grid
    const int64_t cols = t.shape[1];
    V4RT_REQUIRE(s.shape[0] == (rows + 127) / 128 && scale_cols == (cols + 127) / 128,
                 s.file << ": tensor '" << sname << "' is " << safetensors::shape_str(s.shape) << ", expected ["
                        << (rows + 127) / 128 << ", " << (cols + 127) / 128 << "] for FP8 weight "
                        << safetensors::shape_str(t.shape));
    std::vector<float> out(size_t(n_rows * cols));
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t row = row_begin + r;
      const uint8_t* w = t.data + size_t(row * cols);
      const uint8_t* sc = s.data + size_t((row / 128) * scale_cols);
      float* o = out.data() + size_t(r * cols);
      for (int64_t cb = 0; cb < scale_cols; ++cb) {
        const float scale = lut.e8m0[sc[cb]];
        const int64_t c_end = std::min(cols, (cb + 1) * 128);
        for (int64_t c = cb * 128; c < c_end; ++c) o[c] = lut.e4m3[w[c]] * scale;
      }
    }
    bytes_read_ += uint64_t(n_rows * cols) + uint64_t(((row_end + 127) / 128 - row_begin / 128) * scale_cols);
    return out;
  }

  // Packed FP4: byte [o, j] = codes of elements 2j (low nibble) and 2j+1 (high); per-32 scales.
  const int64_t packed_cols = t.shape[1];
  const int64_t cols = 2 * packed_cols;
  V4RT_REQUIRE(cols % 32 == 0 && s.shape[0] == rows && scale_cols == cols / 32,
               s.file << ": tensor '" << sname << "' is " << safetensors::shape_str(s.shape) << ", expected [" << rows
                      << ", " << cols / 32 << "] for packed FP4 weight " << safetensors::shape_str(t.shape));
  std::vector<float> out(size_t(n_rows * cols));
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t row = row_begin + r;
    const uint8_t* w = t.data + size_t(row * packed_cols);
    const uint8_t* sc = s.data + size_t(row * scale_cols);
    float* o = out.data() + size_t(r * cols);
    for (int64_t g = 0; g < scale_cols; ++g) {
      const float scale = lut.e8m0[sc[g]];
      for (int64_t j = g * 16; j < (g + 1) * 16; ++j) {
        const uint8_t b = w[j];
        o[2 * j] = lut.fp4[b & 0xf] * scale;
        o[2 * j + 1] = lut.fp4[b >> 4] * scale;
      }
    }
  }
  bytes_read_ += uint64_t(n_rows * packed_cols) + uint64_t(n_rows * scale_cols);
  return out;
}

std::vector<int64_t> Checkpoint::read_i64(const std::string& name) const {
  const TensorInfo& t = info(name);
  const size_t n = size_t(t.numel());
  std::vector<int64_t> out(n);
  switch (t.dtype) {
    case DType::kI64: std::memcpy(out.data(), t.data, n * 8); break;
    case DType::kI32:
      for (size_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, t.data + 4 * i, 4);
        out[i] = v;
      }
      break;
    default: V4RT_FAIL(t.file << ": tensor '" << name << "' is " << dtype_name(t.dtype) << ", read_i64 needs I64 or I32");
  }
  bytes_read_ += t.bytes;
  return out;
}

}  // namespace v4rt::model
