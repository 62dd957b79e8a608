// SPDX-License-Identifier: MIT
// Helpers for the serving tests: the embedded tiny model (random weights, real vocabulary) written
// once per test binary into the build tree, loaded on the CPU backend.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/presets.h"
#include "model/synthetic.h"

namespace v4rt::launch::serve::testing {

// <build>/tests/launch/<name>: the tiny preset, written if absent (each test binary uses its own
// name so parallel ctest runs never write the same files).
inline std::string tiny_model_dir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(V4RT_BINARY_DIR) / "tests" / "launch" / name;
  if (!std::filesystem::exists(dir / "model.safetensors.index.json"))
    model::write_synthetic_checkpoint(model::preset_config("tiny"), dir.string());
  return dir.string();
}

struct LoadedModel {
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<model::Model> model;
};

inline LoadedModel load_tiny(const std::string& name) {
  LoadedModel m;
  m.ckpt = model::Checkpoint::open(tiny_model_dir(name));
  m.backend = kernels::make_cpu_backend();
  m.model = model::Model::load(*m.ckpt, {}, *m.backend);
  return m;
}

}  // namespace v4rt::launch::serve::testing
