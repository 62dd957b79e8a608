// SPDX-License-Identifier: MIT
// YAML -> GpuSpec / Calibration. Every key is checked: unknown keys, missing required figures and
// non-positive values fail with the file and key named.
#include "launch/plan/hardware.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "common/check.h"
#include "common/install_dirs.h"

namespace v4rt::launch::plan {
namespace {

std::string read_text(const std::string& path, const char* what) {
  std::ifstream in(path);
  V4RT_REQUIRE(in.good(), "cannot read " << what << " file " << path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

YAML::Node parse_map(const std::string& text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    V4RT_FAIL(source << ": invalid YAML: " << e.what());
  }
  V4RT_REQUIRE(root.IsMap(), source << ": expected a mapping of key: value");
  return root;
}

double number(const YAML::Node& node, const std::string& key, const std::string& source) {
  try {
    return node.as<double>();
  } catch (const YAML::Exception&) {
    V4RT_FAIL(source << ": key '" << key << "' must be a number");
  }
}

}  // namespace

GpuSpec parse_gpu_spec(const std::string& yaml_text, const std::string& source) {
  const YAML::Node root = parse_map(yaml_text, source);
  GpuSpec g;
  const std::map<std::string, double*> figures = {
      {"hbm_bytes", &g.hbm_bytes},
      {"hbm_bytes_per_s", &g.hbm_bytes_per_s},
      {"bf16_flops", &g.bf16_flops},
      {"fp8_flops", &g.fp8_flops},
      {"fp4_flops", &g.fp4_flops},
      {"nvlink_bytes_per_s", &g.nvlink_bytes_per_s},
      {"internode_bytes_per_s", &g.internode_bytes_per_s},
      {"nvlink_latency_s", &g.nvlink_latency_s},
      {"internode_latency_s", &g.internode_latency_s},
  };
  for (const auto& kv : root) {
    V4RT_REQUIRE(kv.first.IsScalar(), source << ": every key must be a plain string");
    const std::string key = kv.first.as<std::string>();
    if (key == "name") {
      V4RT_REQUIRE(kv.second.IsScalar(), source << ": key 'name' must be a string");
      g.name = kv.second.as<std::string>();
      continue;
    }
    if (key == "shared_cores") {
      const double v = number(kv.second, key, source);
      V4RT_REQUIRE(v >= 0 && v == std::floor(v), source << ": key 'shared_cores' must be an integer >= 0");
      g.shared_cores = int(v);
      continue;
    }
    if (key == "fp8_block_tiles") {
      try {
        g.fp8_block_tiles = kv.second.as<bool>();
      } catch (const YAML::Exception&) {
        V4RT_FAIL(source << ": key 'fp8_block_tiles' must be true or false");
      }
      continue;
    }
    auto it = figures.find(key);
    V4RT_REQUIRE(it != figures.end(), source << ": unknown key '" << key << "'");
    *it->second = number(kv.second, key, source);
  }
  V4RT_REQUIRE(!g.name.empty(), source << ": missing key 'name'");
  for (const auto& [key, value] : figures) {
    if (key == "fp4_flops") {
      V4RT_REQUIRE(*value >= 0, source << ": key 'fp4_flops' must be >= 0");
      continue;
    }
    V4RT_REQUIRE(root[key], source << ": missing key '" << key << "'");
    V4RT_REQUIRE(*value > 0, source << ": key '" << key << "' must be > 0");
  }
  return g;
}

GpuSpec load_gpu_spec(const std::string& name_or_path, const std::string& config_dir) {
  std::string path = name_or_path;
  if (name_or_path.find('/') == std::string::npos && name_or_path.find(".yaml") == std::string::npos)
    path = config_dir + "/hardware/" + name_or_path + ".yaml";
  V4RT_REQUIRE(std::filesystem::exists(path),
               "unknown GPU '" << name_or_path << "': no hardware table " << path
                               << (std::filesystem::is_directory(config_dir)
                                       ? ""
                                       : " (the config folder does not exist; pass --config-dir DIR)"));
  return parse_gpu_spec(read_text(path, "hardware"), path);
}

const char* op_family_name(OpFamily family) {
  static const char* const kNames[kNumOpFamilies] = {"linear", "head", "experts", "gate",
                                                     "attention", "indexer", "hc", "other"};
  return kNames[int(family)];
}

OpFamily op_family_at(int index) {
  CHECK(index >= 0 && index < kNumOpFamilies) << index;
  return OpFamily(index);
}

std::optional<OpFamily> parse_op_family(const std::string& name) {
  for (int i = 0; i < kNumOpFamilies; ++i)
    if (name == op_family_name(OpFamily(i))) return OpFamily(i);
  return std::nullopt;
}

bool Calibration::has_families() const {
  for (const FamilyCalibration& f : families)
    if (f.fitted) return true;
  return false;
}

namespace {

// families: {linear: {efficiency: 0.3, launch_us: 4}, ...}
void parse_families(const YAML::Node& node, const std::string& source, Calibration& c) {
  V4RT_REQUIRE(node.IsMap(), source << ": key 'families' must be a mapping of family: {efficiency, launch_us}");
  for (const auto& kv : node) {
    const std::string name = kv.first.as<std::string>();
    const std::optional<OpFamily> fam = parse_op_family(name);
    V4RT_REQUIRE(fam, source << ": families: unknown op family '" << name
                             << "' (known: linear, head, experts, gate, attention, indexer, hc, other)");
    V4RT_REQUIRE(kv.second.IsMap(), source << ": families." << name << " must be a mapping");
    FamilyCalibration f;
    f.fitted = true;
    for (const auto& fk : kv.second) {
      const std::string key = fk.first.as<std::string>();
      const std::string where = "families." + name + "." + key;
      const double v = number(fk.second, where, source);
      if (key == "efficiency") {
        V4RT_REQUIRE(v > 0 && v <= 1, source << ": key '" << where << "' must be in (0, 1], got " << v);
        f.efficiency = v;
      } else if (key == "launch_us") {
        V4RT_REQUIRE(v >= 0, source << ": key '" << where << "' must be >= 0, got " << v);
        f.launch_s = v * 1e-6;
      } else {
        V4RT_FAIL(source << ": unknown key '" << where << "' (known: efficiency, launch_us)");
      }
    }
    c.families[size_t(*fam)] = f;
  }
}

}  // namespace

Calibration parse_calibration(const std::string& yaml_text, const std::string& source) {
  const YAML::Node root = parse_map(yaml_text, source);
  Calibration c;
  for (const auto& kv : root) {
    V4RT_REQUIRE(kv.first.IsScalar(), source << ": every key must be a plain string");
    const std::string key = kv.first.as<std::string>();
    if (key == "families") {
      parse_families(kv.second, source, c);
      continue;
    }
    if (key == "fitted_on") {
      V4RT_REQUIRE(kv.second.IsSequence(), source << ": key 'fitted_on' must be a list of point keys");
      for (const auto& item : kv.second) c.fitted_on.push_back(item.as<std::string>());
      continue;
    }
    if (key == "source") {
      V4RT_REQUIRE(kv.second.IsScalar(), source << ": key 'source' must be a string");
      c.source = kv.second.as<std::string>();
      continue;
    }
    const double v = number(kv.second, key, source);
    auto fraction = [&](double& into) {
      V4RT_REQUIRE(v > 0 && v <= 1, source << ": key '" << key << "' must be in (0, 1], got " << v);
      into = v;
    };
    auto non_negative = [&](double& into, double scale) {
      V4RT_REQUIRE(v >= 0, source << ": key '" << key << "' must be >= 0, got " << v);
      into = v * scale;
    };
    if (key == "hbm_fraction") fraction(c.hbm_fraction);
    else if (key == "flop_fraction") fraction(c.flop_fraction);
    else if (key == "link_fraction") fraction(c.link_fraction);
    else if (key == "all_to_all_gb_per_s") non_negative(c.all_to_all_bytes_per_s, 1e9);
    else if (key == "launch_overhead_us_per_layer") non_negative(c.launch_overhead_s_per_layer, 1e-6);
    else if (key == "collective_latency_us") non_negative(c.collective_latency_s, 1e-6);
    else if (key == "runtime_reserve_gib") non_negative(c.runtime_reserve_bytes, double(1ull << 30));
    else if (key == "prefill_chunk_tokens") {
      V4RT_REQUIRE(v >= 1 && v <= 1e9, source << ": key 'prefill_chunk_tokens' must be in [1, 1e9]");
      c.prefill_chunk_tokens = int64_t(v);
    } else {
      V4RT_FAIL(source << ": unknown key '" << key << "' (known: hbm_fraction, flop_fraction, "
                << "link_fraction, all_to_all_gb_per_s, launch_overhead_us_per_layer, "
                << "collective_latency_us, runtime_reserve_gib, prefill_chunk_tokens, families, "
                << "fitted_on, source)");
    }
  }
  return c;
}

std::string calibration_yaml(const Calibration& c) {
  YAML::Emitter out;
  out.SetDoublePrecision(6);
  out << YAML::BeginMap;
  if (!c.source.empty()) out << YAML::Key << "source" << YAML::Value << c.source;
  out << YAML::Key << "hbm_fraction" << YAML::Value << c.hbm_fraction;
  out << YAML::Key << "flop_fraction" << YAML::Value << c.flop_fraction;
  out << YAML::Key << "link_fraction" << YAML::Value << c.link_fraction;
  out << YAML::Key << "all_to_all_gb_per_s" << YAML::Value << c.all_to_all_bytes_per_s / 1e9;
  out << YAML::Key << "collective_latency_us" << YAML::Value << c.collective_latency_s * 1e6;
  out << YAML::Key << "launch_overhead_us_per_layer" << YAML::Value << c.launch_overhead_s_per_layer * 1e6;
  out << YAML::Key << "runtime_reserve_gib" << YAML::Value << c.runtime_reserve_bytes / double(1ull << 30);
  out << YAML::Key << "prefill_chunk_tokens" << YAML::Value << c.prefill_chunk_tokens;
  if (c.has_families()) {
    out << YAML::Key << "families" << YAML::Value << YAML::BeginMap;
    for (int i = 0; i < kNumOpFamilies; ++i) {
      const FamilyCalibration& f = c.families[size_t(i)];
      if (!f.fitted) continue;
      out << YAML::Key << op_family_name(OpFamily(i)) << YAML::Value << YAML::Flow << YAML::BeginMap
          << YAML::Key << "efficiency" << YAML::Value << f.efficiency << YAML::Key << "launch_us"
          << YAML::Value << f.launch_s * 1e6 << YAML::EndMap;
    }
    out << YAML::EndMap;
  }
  if (!c.fitted_on.empty()) {
    out << YAML::Key << "fitted_on" << YAML::Value << YAML::BeginSeq;
    for (const std::string& k : c.fitted_on) out << k;
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Calibration load_calibration(const std::string& path) {
  return parse_calibration(read_text(path, "calibration"), path);
}

std::string default_config_dir() {
  std::vector<std::string> tried;
  const std::string dir = find_data_path("configs", "configs", &tried);
  // None exists: name the first place looked at, so the "no hardware table" error shows it.
  if (dir.empty()) return tried.empty() ? std::string("configs") : tried.front();
  return dir;
}

}  // namespace v4rt::launch::plan
