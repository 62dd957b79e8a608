// SPDX-License-Identifier: MIT
// The Comm selection rule (cluster/comm_select.h) from per-rank placements, and the watchdog of
// device Comms (cluster/watchdog.h) with fake probes. No MPI, no GPU.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "cluster/comm_select.h"
#include "cluster/watchdog.h"
#include "common/check.h"

namespace v4rt::cluster {
namespace {

std::vector<RankPlacement> placements(std::initializer_list<std::pair<const char*, int>> ranks) {
  std::vector<RankPlacement> out;
  int r = 0;
  for (const auto& [host, device] : ranks) out.push_back({host, device, r++});
  return out;
}

TEST(CommSelect, CpuRanksGetMpi) {
  EXPECT_EQ(choose_comm(placements({{"a", -1}, {"a", -1}, {"b", -1}}), true).backend, CommBackend::kMpi);
  EXPECT_EQ(choose_comm(placements({{"a", -1}}), false).backend, CommBackend::kMpi);
}

TEST(CommSelect, DistinctGpusGetNccl) {
  EXPECT_EQ(choose_comm(placements({{"a", 0}, {"a", 1}}), true).backend, CommBackend::kNccl);
  // The same ordinal on two hosts is two GPUs.
  EXPECT_EQ(choose_comm(placements({{"a", 0}, {"b", 0}, {"a", 1}, {"b", 1}}), true).backend, CommBackend::kNccl);
  EXPECT_EQ(choose_comm(placements({{"a", 3}}), true).backend, CommBackend::kNccl);
}

TEST(CommSelect, SharedGpuGetsStagedAndSaysWhy) {
  const CommChoice c = choose_comm(placements({{"a", 0}, {"a", 1}, {"a", 0}, {"a", 1}}), true);
  EXPECT_EQ(c.backend, CommBackend::kStaged);
  EXPECT_NE(c.reason.find("world ranks 0 and 2 share GPU 0 on host a"), std::string::npos) << c.reason;
  EXPECT_EQ(choose_comm(placements({{"h", 0}, {"h", 0}}), true).backend, CommBackend::kStaged);
}

TEST(CommSelect, NoNcclBuildStagesCudaRanks) {
  const CommChoice c = choose_comm(placements({{"a", 0}, {"a", 1}}), false);
  EXPECT_EQ(c.backend, CommBackend::kStaged);
  EXPECT_NE(c.reason.find("no NCCL"), std::string::npos) << c.reason;
}

TEST(CommSelect, MixedCpuAndCudaRanksIsAnError) {
  try {
    choose_comm(placements({{"a", 0}, {"a", -1}}), true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("world rank 1 (cpu)"), std::string::npos) << e.what();
  }
}

// Waits (bounded) until the watchdog reports a failure; returns its message, "" if none came.
struct FailSink {
  std::mutex mu;
  std::condition_variable cv;
  std::string why;
  CommWatchdog::OnFail on_fail() {
    return [this](const std::string& w) {
      std::lock_guard<std::mutex> lock(mu);
      why = w;
      cv.notify_all();
    };
  }
  std::string wait(double max_s) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::duration<double>(max_s), [this] { return !why.empty(); });
    return why;
  }
};

TEST(CommWatchdog, AsyncErrorFailsAtOnce) {
  FailSink sink;
  std::atomic<int> calls{0};
  CommWatchdog::Probe probe;
  probe.async_error = [&]() -> std::string { return ++calls >= 3 ? "unhandled cuda error" : ""; };
  probe.work_done = [] { return true; };
  CommWatchdog dog("comm 'ep'", 0, probe, sink.on_fail(), 0.001);
  const std::string why = sink.wait(30);
  EXPECT_EQ(why, "comm 'ep': asynchronous error: unhandled cuda error");
  EXPECT_TRUE(dog.failed());
}

TEST(CommWatchdog, PendingWorkPastTheDeadlineFails) {
  FailSink sink;
  CommWatchdog::Probe probe;
  probe.async_error = [] { return std::string(); };
  probe.work_done = [] { return false; };  // a peer never arrives
  CommWatchdog dog("comm 'tp'", 0.05, probe, sink.on_fail(), 0.001);
  int recorded = 0;
  dog.enqueued([&] { ++recorded; });
  EXPECT_EQ(recorded, 1);
  const std::string why = sink.wait(30);
  EXPECT_NE(why.find("comm 'tp': collective did not complete within 0.05 s"), std::string::npos) << why;
}

TEST(CommWatchdog, HealthyCommNeverFails) {
  FailSink sink;
  std::atomic<int> done_queries{0};
  CommWatchdog::Probe probe;
  probe.async_error = [] { return std::string(); };
  probe.work_done = [&] { return ++done_queries > 0; };
  {
    CommWatchdog dog("comm 'sp'", 0.05, probe, sink.on_fail(), 0.001);
    dog.enqueued();
    // Bounded wait for the poll that finds the work done.
    for (int i = 0; i < 30000 && done_queries == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_GT(done_queries.load(), 0);
    const uint64_t polls = dog.polls();
    for (int i = 0; i < 30000 && dog.polls() < polls + 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_FALSE(dog.failed());
  }
  EXPECT_EQ(sink.why, "");
}

}  // namespace
}  // namespace v4rt::cluster
