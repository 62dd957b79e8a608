// SPDX-License-Identifier: MIT
// --backend / --device / --no-graphs: CLI options for the backend choice (kernels/backend_factory.h).
#include "launch/backend_option.h"

#include <CLI/CLI.hpp>

#include "kernels/backend_factory.h"

namespace v4rt::launch {

void add_backend_option(CLI::App* app, std::string* backend, int* device) {
  if (backend->empty()) *backend = "cpu";
  const std::string help = kernels::have_cuda_backend()
                               ? "Backend the model runs on: cpu (fp32 reference) or cuda"
                               : "Backend the model runs on: cpu (fp32 reference); cuda needs a CUDA build";
  app->add_option("--backend", *backend, help)->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  if (device) {
    app->add_option("--device", *device, "GPU index for --backend cuda")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
  }
}

void add_no_graphs_flag(CLI::App* app, bool* graphs) {
  app->add_flag_callback(
      "--no-graphs", [graphs] { *graphs = false; },
      "Launch every op of a decode step on its own even when the runtime YAML records steps as CUDA graphs "
      "(cuda_graphs: true; the default cuda_graphs: false launches op by op too)");
}

std::unique_ptr<kernels::Backend> make_selected_backend(const std::string& backend, int device) {
  return kernels::make_backend(backend, device);
}

std::unique_ptr<kernels::Backend> make_selected_backend(const std::string& backend, const kernels::BackendOptions& options) {
  return kernels::make_backend(backend, options);
}

}  // namespace v4rt::launch
