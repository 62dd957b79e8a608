// SPDX-License-Identifier: MIT
// Fuzz targets: the Hugging Face config.json parser, the runtime YAML parser and the planner's
// hardware / calibration YAML (`v4rt plan --gpu FILE --calibration FILE`). An accepted
// config must survive a round trip through its own writer (write -> parse -> write gives the same
// text), and pass validate() again; an accepted runtime config keeps its documented ranges.
#include <string>

#include "common/check.h"
#include "launch/plan/hardware.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "launch/runtime_config.h"
#include "tests/fuzz/fuzz_targets.h"

namespace v4rt::fuzz {

void fuzz_model_config(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  model::ModelConfig c;
  try {
    c = model::parse_model_config(text, "fuzz/config.json");
  } catch (const v4rt::Error&) {
    return;
  }
  const std::string once = model::model_config_json(c);
  model::ModelConfig again;
  try {
    again = model::parse_model_config(once, "fuzz/roundtrip.json");
  } catch (const v4rt::Error& e) {
    fuzz_fail(std::string("an accepted config does not parse back: ") + e.what() + "\n" + once);
  }
  V4RT_FUZZ_REQUIRE(model::model_config_json(again) == once, "config.json round trip is stable\n" + once);
  // The tensor list of a small accepted config (a huge one is legal but would only measure memory).
  const int64_t work = int64_t(c.num_hidden_layers + c.num_nextn_predict_layers) * (c.n_routed_experts + 8);
  if (work > 0 && work < 4096) {
    const auto expected = model::expected_tensors(c);
    V4RT_FUZZ_REQUIRE(!expected.empty(), "an accepted config expects tensors");
    for (const auto& [name, t] : expected) {
      V4RT_FUZZ_REQUIRE(!model::release_shard_name(c, name).empty(), "every tensor has a release shard: " + name);
      for (int64_t d : t.shape) V4RT_FUZZ_REQUIRE(d > 0, "expected shapes are positive: " + name);
    }
  }
}

void fuzz_runtime_config(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  launch::RuntimeConfig c;
  try {
    c = launch::parse_runtime_config(text, "fuzz.yaml");
  } catch (const v4rt::Error&) {
    return;
  }
  V4RT_FUZZ_REQUIRE(c.parallel.tp >= 1 && c.parallel.sp >= 1 && c.parallel.ep >= 1 && c.parallel.dp >= 1,
                    "parallel sizes >= 1");
  V4RT_FUZZ_REQUIRE(c.numerics == "reference" || c.numerics == "official", "numerics mode");
  V4RT_FUZZ_REQUIRE(c.sampling.top_p > 0 && c.sampling.top_p <= 1 && c.sampling.temperature >= 0, "sampling ranges");
  V4RT_FUZZ_REQUIRE(c.server.port >= 0 && c.server.port <= 65535, "port range");
  // The resolved YAML (what rank 0 logs and every rank hashes) parses back to the same YAML; the
  // api key is masked in it, so compare with the key cleared.
  c.server.api_key.clear();
  const std::string once = launch::runtime_config_yaml(c);
  launch::RuntimeConfig again;
  try {
    again = launch::parse_runtime_config(once, "fuzz/resolved.yaml");
  } catch (const v4rt::Error& e) {
    fuzz_fail(std::string("resolved YAML does not parse back: ") + e.what() + "\n" + once);
  }
  V4RT_FUZZ_REQUIRE(launch::runtime_config_yaml(again) == once, "resolved YAML round trip is stable\n" + once);
}

void fuzz_plan_yaml(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    try {
      const launch::plan::Calibration c = launch::plan::parse_calibration(text, "fuzz-calibration.yaml");
      V4RT_FUZZ_REQUIRE(c.hbm_fraction > 0 && c.hbm_fraction <= 1 && c.flop_fraction > 0 && c.flop_fraction <= 1 &&
                            c.link_fraction > 0 && c.link_fraction <= 1,
                        "fractions in (0, 1]");
      V4RT_FUZZ_REQUIRE(c.prefill_chunk_tokens >= 1, "prefill chunk >= 1 token");
    } catch (const v4rt::Error&) {
    }
  } else {
    try {
      const launch::plan::GpuSpec g = launch::plan::parse_gpu_spec(text, "fuzz-gpu.yaml");
      V4RT_FUZZ_REQUIRE(!g.name.empty() && g.hbm_bytes > 0 && g.hbm_bytes_per_s > 0 && g.fp4_flops >= 0,
                        "hardware figures positive");
    } catch (const v4rt::Error&) {
    }
  }
}

}  // namespace v4rt::fuzz
