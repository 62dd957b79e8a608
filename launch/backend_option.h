// SPDX-License-Identifier: MIT
// The `--backend cpu|cuda`, `--device N` and `--no-graphs` options shared by the commands that run
// the model (logits, generate, batch, serve, bench step), and the backend they select.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/backend_factory.h"

namespace CLI {
class App;
}

namespace v4rt::launch {

// Adds --backend (checked against cpu|cuda; default: the current value of *backend, "cpu" when
// empty) and, when `device` is given, --device N (default: the current value of *device).
void add_backend_option(CLI::App* app, std::string* backend, int* device = nullptr);
// Adds --no-graphs, which sets *graphs false: the CUDA backend then launches every op of a decode
// step on its own instead of recording the step as one graph (BackendOptions::cuda_graphs).
void add_no_graphs_flag(CLI::App* app, bool* graphs);

// The backend named by the options; throws v4rt::Error for "cuda" in a binary without CUDA.
std::unique_ptr<kernels::Backend> make_selected_backend(const std::string& backend, int device = 0);
// The same with every backend setting, e.g. launch::backend_options(config, device) of a runtime
// YAML (its debug switches: sync_each_op, check_finite, dump_dir, the CUDA ones).
std::unique_ptr<kernels::Backend> make_selected_backend(const std::string& backend, const kernels::BackendOptions& options);

}  // namespace v4rt::launch
