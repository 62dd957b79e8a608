// SPDX-License-Identifier: MIT
// Built-in model shapes: "flash" and "pro" are exactly the release config.json files
// (spec/release/*/config.json); "tiny" is a small model with every V4 feature (window, CSA with
// indexer, HCA, hash- and score-routed MoE, mHC, grouped output) and the real 129,280-token vocab,
// used for the embedded test model and for multi-rank tests.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace v4rt::model {

std::vector<std::string> preset_names();  // {"tiny", "flash", "pro"}

// The preset's config. `mtp` adds one MTP layer to "tiny" (flash/pro always have one). Throws
// v4rt::Error listing the known presets for an unknown name.
ModelConfig preset_config(const std::string& name, bool mtp = false);

// The first `num_layers` layers of `config` (MTP layers kept), e.g. a slice of Flash small enough
// to write to disk. Hash layers are clipped to the slice.
ModelConfig slice_layers(const ModelConfig& config, int num_layers);

}  // namespace v4rt::model
