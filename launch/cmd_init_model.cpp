// SPDX-License-Identifier: MIT
// `v4rt init-model`: writes a random-weight checkpoint in the official release layout (FP8 block-
// scaled weights, packed FP4 experts, shards + index) for a preset shape. Flash and Pro are
// hundreds of GB, so for them only a slice of the first N layers (--layers) is written.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "common/check.h"
#include "launch/commands.h"
#include "model/checkpoint.h"
#include "model/presets.h"
#include "model/synthetic.h"

namespace v4rt::launch {
namespace {

struct InitModelOptions {
  std::string preset = "tiny";
  std::string out;
  uint64_t seed = 1;
  bool mtp = false;
  int layers = 0;  // 0: every layer of the preset
  int shards = 2;
};

uint64_t checkpoint_bytes(const model::ModelConfig& config) {
  uint64_t total = 0;
  for (const auto& [name, t] : model::expected_tensors(config)) {
    uint64_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= uint64_t(d);
    total += n;
  }
  return total;
}

void run_init_model(const InitModelOptions& o) {
  model::ModelConfig config = model::preset_config(o.preset, o.mtp);
  const bool huge = o.preset != "tiny";
  if (huge && o.layers == 0) {
    V4RT_FAIL("preset '" << o.preset << "' is " << checkpoint_bytes(config) / (uint64_t(1) << 30)
                         << " GiB of weights; write a slice of its first layers with --layers N (e.g. --layers 1: "
                         << checkpoint_bytes(model::slice_layers(config, 1)) / (uint64_t(1) << 20) << " MiB)");
  }
  if (o.layers > 0) config = model::slice_layers(config, o.layers);
  std::printf("writing %s: %d layers%s, %.1f MiB, seed %llu -> %s\n", o.preset.c_str(), config.num_hidden_layers,
              config.num_nextn_predict_layers ? " + MTP" : "", double(checkpoint_bytes(config)) / (1 << 20),
              static_cast<unsigned long long>(o.seed), o.out.c_str());
  std::fflush(stdout);
  const uint64_t total = model::write_synthetic_checkpoint(config, o.out, {o.seed, o.shards});
  std::printf("wrote %zu tensors, %llu bytes\n", model::expected_tensors(config).size(),
              static_cast<unsigned long long>(total));
}

}  // namespace

void register_init_model(CLI::App& app) {
  auto o = std::make_shared<InitModelOptions>();
  CLI::App* cmd = app.add_subcommand("init-model", "Write a random-weight checkpoint (release layout) for a preset");
  cmd->add_option("--preset", o->preset, "Model shape: tiny | flash | pro")
      ->check(CLI::IsMember({"tiny", "flash", "pro"}));
  cmd->add_option("--out", o->out, "Output directory")->required();
  cmd->add_option("--seed", o->seed, "Random seed (same seed, same bytes)");
  cmd->add_flag("--mtp", o->mtp, "Add one MTP layer to the tiny preset (flash/pro always have one)");
  cmd->add_option("--layers", o->layers, "Write only the first N layers (required for flash/pro)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--shards", o->shards, "Number of safetensors shards; 0: the release placement (a shard per layer)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o] { run_init_model(*o); });
}

}  // namespace v4rt::launch
