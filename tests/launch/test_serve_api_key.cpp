// SPDX-License-Identifier: MIT
// `v4rt serve` as a child process on the embedded tiny model: the API key taken from
// --api-key-file and from $V4RT_API_KEY (so it need not show in `ps`), and a missing key file
// refused naming the flag. Every wait has a deadline; the child is always killed.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdlib>
#include <fstream>

#include "tests/batch/batch_test_util.h"

namespace v4rt::launch {
namespace {

using namespace std::chrono_literals;
namespace bt = batch::testing;

// Starts serve with `extra` flags, waits for its port, and checks that /v1/models refuses a
// request without the key and, within 120 s, answers one that carries `key`.
void expect_key_required(const std::string& name, const std::vector<std::string>& extra, const std::string& key) {
  const std::string dir = bt::scratch_dir("serve_key_" + name);
  const std::string port_file = dir + "/port", log = dir + "/log";
  std::vector<std::string> argv = {V4RT_EXE, "serve", "--model", bt::tiny_model_dir(), "--tokenizer",
                                   bt::tokenizer_path(), "--port", "0", "--port-file", port_file};
  argv.insert(argv.end(), extra.begin(), extra.end());
  bt::Child child = bt::Child::start(argv, log);
  ASSERT_GT(child.pid, 0);
  int port = 0;
  for (auto until = std::chrono::steady_clock::now() + 60s; port == 0 && std::chrono::steady_clock::now() < until;) {
    std::ifstream(port_file) >> port;
    if (port == 0) std::this_thread::sleep_for(50ms);
  }
  if (port == 0) {
    child.kill_and_reap(SIGKILL);
    FAIL() << "serve did not write its port: " << bt::read_text(log);
  }
  httplib::Client anon("127.0.0.1", port);
  anon.set_read_timeout(10, 0);
  auto denied = anon.Get("/v1/models");
  EXPECT_TRUE(denied && denied->status == 401) << (denied ? denied->body : "no response");
  httplib::Client wrong("127.0.0.1", port);
  wrong.set_bearer_token_auth(key + "x");
  auto wrong_r = wrong.Get("/v1/models");
  EXPECT_TRUE(wrong_r && wrong_r->status == 401);
  httplib::Client c("127.0.0.1", port);
  c.set_bearer_token_auth(key);
  c.set_read_timeout(10, 0);
  int status = 0;
  for (auto until = std::chrono::steady_clock::now() + 120s; status != 200 && std::chrono::steady_clock::now() < until;) {
    auto r = c.Get("/v1/models");
    status = r ? r->status : -1;
    EXPECT_NE(status, 401) << "the key was not taken";
    if (status == 401) break;
    if (status != 200) std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(status, 200) << bt::read_text(log);
  EXPECT_EQ(child.kill_and_reap(SIGTERM), 0) << bt::read_text(log);
}

TEST(ServeApiKey, FromFile) {
  const std::string dir = bt::scratch_dir("serve_key_file_src");
  std::ofstream(dir + "/key") << "key-from-file\n";
  expect_key_required("file", {"--api-key-file", dir + "/key"}, "key-from-file");
}

TEST(ServeApiKey, FromEnvironment) {
  ::setenv("V4RT_API_KEY", "key-from-env", 1);
  expect_key_required("env", {}, "key-from-env");
  ::unsetenv("V4RT_API_KEY");
}

TEST(ServeApiKey, MissingKeyFileNamesTheFlag) {
  const std::string dir = bt::scratch_dir("serve_key_missing");
  const std::string log = dir + "/log";
  EXPECT_EQ(bt::run_cmd({V4RT_EXE, "serve", "--model", dir + "/no-model", "--api-key-file", dir + "/none"}, log, 60), 1);
  EXPECT_NE(bt::read_text(log).find("--api-key-file"), std::string::npos) << bt::read_text(log);
}

}  // namespace
}  // namespace v4rt::launch
