// SPDX-License-Identifier: MIT
// Stand-alone driver of `bench step` / `bench indexer` / `bench prefill` (launch/bench/) for the device
// script: the same code as `v4rt bench step`, linked without the rest of the CLI.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/check.h"
#include "launch/bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app("v4rt GPU benchmarks (bench step, bench indexer, bench prefill)");
  auto* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  v4rt::launch::register_bench_step(*bench);
  v4rt::launch::register_bench_prefill(*bench);
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const v4rt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
