// SPDX-License-Identifier: MIT
// PLACEHOLDER: replaced by the real command.
#include <CLI/CLI.hpp>

#include "launch/commands.h"

namespace v4rt::launch {
void register_init_model(CLI::App& app) { (void)app; }
}  // namespace v4rt::launch
