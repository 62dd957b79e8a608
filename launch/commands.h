// SPDX-License-Identifier: MIT
// Every `v4rt` subcommand registers itself on the CLI11 app through one function declared here and
// defined in its own launch/cmd_<name>.cpp. A command's callback throws v4rt::Error for bad input;
// main() prints it as one line and exits 1.
#pragma once

namespace CLI {
class App;
}

namespace v4rt::launch {

void register_logits(CLI::App& app);       // cmd_logits.cpp
void register_generate(CLI::App& app);     // cmd_generate.cpp
void register_init_model(CLI::App& app);   // cmd_init_model.cpp
void register_inspect(CLI::App& app);      // cmd_inspect.cpp
void register_text(CLI::App& app);         // cmd_text.cpp: tokenize, detokenize, chat-encode, parse-output
void register_bench(CLI::App& app);        // cmd_bench.cpp
void register_plan(CLI::App& app);         // cmd_plan.cpp
void register_serve(CLI::App& app);        // cmd_serve.cpp
void register_batch(CLI::App& app);        // cmd_batch.cpp

// Exit code a command asks main() to return (set by callbacks that finish with a non-zero status
// without an error message of their own, e.g. a server that stopped after a rank failure).
int& exit_code();

}  // namespace v4rt::launch
