// SPDX-License-Identifier: MIT
// `v4rt` entry point: builds the CLI from every command's register function, runs the chosen one,
// and turns a v4rt::Error (bad input at an edge) into one line on stderr and exit code 1.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/check.h"
#include "launch/commands.h"
#include "launch/runtime_config.h"

namespace v4rt::launch {
int& exit_code() {
  static int code = 0;
  return code;
}
}  // namespace v4rt::launch

int main(int argc, char** argv) {
  using namespace v4rt::launch;
  CLI::App app{"v4rt: DeepSeek-V4 inference runtime (CPU reference, CUDA, MPI/NCCL)"};
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.add_flag_callback(
      "--help-debug",
      [] {
        std::printf("Diagnostic switches (runtime YAML, section `debug:`):\n");
        for (const auto& [name, what] : v4rt::launch::debug_switches()) std::printf("  debug.%-24s %s\n", name.c_str(), what.c_str());
        throw CLI::Success();
      },
      "List the diagnostic switches of the `debug:` config section");
  app.require_subcommand(0, 1);
  register_logits(app);
  register_generate(app);
  register_init_model(app);
  register_inspect(app);
  register_text(app);
  register_bench(app);
  register_plan(app);
  register_serve(app);
  register_batch(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const v4rt::Error& e) {
    std::fprintf(stderr, "v4rt: error: %s\n", e.what());
    return 1;
  }
  if (app.get_subcommands().empty()) {
    std::fprintf(stderr, "%s", app.help().c_str());
    return 1;
  }
  return exit_code();
}
