// SPDX-License-Identifier: MIT
// LaunchLog (kernels/cuda/launch_log.h) without a device: what a logged step records, when two logs
// have the same shape (so a cached executable can take the step) and which records differ (the
// nodes a replay sets). No CUDA call is made: the ops go to the log of a stream that is never used.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "kernels/cuda/launch_log.h"

namespace v4rt::kernels::cuda {
namespace {

const cudaStream_t kStream = reinterpret_cast<cudaStream_t>(uintptr_t(0x5a));
int g_kernel_a, g_kernel_b;  // stand-ins for kernel functions (only their addresses are logged)

struct Params {
  int64_t position;
  float scale;
  int32_t rows;
};

void add_kernel(LaunchLog& log, const void* func, unsigned grid, const Params& p) {
  unsigned char* at = log.add_kernel(func, dim3(grid), dim3(128), 0, sizeof(Params) + 16);
  std::memcpy(at, &p, sizeof(p));
  log.add_arg(0);
  const int32_t extra = 7;
  std::memcpy(at + 16 + 0, &extra, sizeof(extra));
  log.add_arg(16);
}

// A step: an upload, a memset, a kernel, a library call (its plan fixes its kernels, then an
// address), a second kernel.
void step(LaunchLog& log, int64_t position, const void* staged, unsigned grid, int plan, int address = 0) {
  const int key[2] = {plan, address};
  log.activate(kStream);
  char dst[64];
  copy_async(dst + 0, staged, 32, cudaMemcpyHostToDevice, kStream);
  memset_async(dst + 32, 0xff, 16, kStream);
  add_kernel(log, &g_kernel_a, grid, Params{position, 0.5f, 3});
  run_async(key, sizeof(key), sizeof(int), kStream, [](cudaStream_t) { FAIL() << "a logged call ran"; });
  add_kernel(log, &g_kernel_b, 4, Params{0, 1.f, 3});
  log.deactivate();
}

TEST(LaunchLog, RecordsTheStepInOrder) {
  LaunchLog log;
  char staged[32] = {};
  step(log, 100, staged, 8, 1);
  ASSERT_EQ(log.size(), 5u);
  EXPECT_EQ(log[0].kind, LaunchRecord::Kind::kCopy);
  EXPECT_EQ(log[0].src, staged);
  EXPECT_EQ(log[0].count, 32u);
  EXPECT_EQ(log[1].kind, LaunchRecord::Kind::kMemset);
  EXPECT_EQ(log[1].value, 0xff);
  EXPECT_EQ(log[2].kind, LaunchRecord::Kind::kKernel);
  EXPECT_EQ(log[2].func, &g_kernel_a);
  EXPECT_EQ(log[2].grid.x, 8u);
  EXPECT_EQ(log[2].num_args, 2u);
  Params p{};
  std::memcpy(&p, log.args(log[2])[0], sizeof(p));
  EXPECT_EQ(p.position, 100);
  EXPECT_EQ(*static_cast<int32_t*>(log.args(log[2])[1]), 7);
  EXPECT_EQ(log[3].kind, LaunchRecord::Kind::kOpaque);
  EXPECT_EQ(log[4].func, &g_kernel_b);
  // Nothing is logged once the log is inactive, and another stream's ops never are.
  EXPECT_EQ(LaunchLog::active_for(kStream), nullptr);
  log.activate(kStream);
  EXPECT_EQ(LaunchLog::active_for(kStream), &log);
  EXPECT_EQ(LaunchLog::active_for(reinterpret_cast<cudaStream_t>(uintptr_t(0x5b))), nullptr);
  log.deactivate();
}

TEST(LaunchLog, ShapeAndChangedRecords) {
  char staged_a[32] = {}, staged_b[32] = {};
  LaunchLog a, b;
  step(a, 100, staged_a, 8, 1);
  // The next token: another position, grid and staging address, the same library call.
  step(b, 101, staged_b, 9, 1);
  EXPECT_TRUE(a.same_shape(b));
  EXPECT_FALSE(b.same_record(0, a));  // the upload's source moved
  EXPECT_TRUE(b.same_record(1, a));   // the memset did not
  EXPECT_FALSE(b.same_record(2, a));  // position and grid
  EXPECT_TRUE(b.same_record(4, a));
  // The same step again: every record equal.
  LaunchLog c;
  step(c, 101, staged_b, 9, 1);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_TRUE(c.same_record(i, b)) << i;
  // The library call's plan on another address: the same shape, that record changed.
  LaunchLog moved;
  step(moved, 101, staged_b, 9, 1, 64);
  EXPECT_TRUE(moved.same_shape(b));
  EXPECT_FALSE(moved.same_record(3, b));
  EXPECT_TRUE(moved.same_record(4, b));
  // Another library plan or a different op sequence: another shape.
  LaunchLog d;
  step(d, 101, staged_b, 9, 2);
  EXPECT_FALSE(d.same_shape(b));
  LaunchLog e;
  e.activate(kStream);
  add_kernel(e, &g_kernel_a, 9, Params{101, 0.5f, 3});
  e.deactivate();
  EXPECT_FALSE(e.same_shape(b));
  // swap hands a replay its new log; the old one is reused for the next step.
  b.swap(e);
  EXPECT_EQ(b.size(), 1u);
  EXPECT_EQ(e.size(), 5u);
  EXPECT_TRUE(e.same_shape(c));
}

// Kernel records carry the launch's programmatic serialization (launch.cuh, on by default): the
// captured graph's edges differ with it, so logs that differ there are not the same shape.
TEST(LaunchLog, ProgrammaticLaunchIsPartOfTheShape) {
  EXPECT_TRUE(programmatic_launch());
  char staged[32] = {};
  LaunchLog on, off;
  step(on, 100, staged, 8, 1);
  set_programmatic_launch(false);
  step(off, 100, staged, 8, 1);
  set_programmatic_launch(true);
  EXPECT_TRUE(on[2].programmatic);
  EXPECT_FALSE(off[2].programmatic);
  EXPECT_FALSE(on.same_shape(off));
  LaunchLog again;
  step(again, 101, staged, 9, 1);
  EXPECT_TRUE(again.same_shape(on));
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t config = programmatic_config(dim3(3), dim3(128), 64, kStream, attr);
  EXPECT_EQ(config.numAttrs, 1u);
  EXPECT_EQ(config.attrs[0].id, cudaLaunchAttributeProgrammaticStreamSerialization);
  EXPECT_EQ(config.attrs[0].val.programmaticStreamSerializationAllowed, 1);
  EXPECT_EQ(config.gridDim.x, 3u);
  EXPECT_EQ(config.dynamicSmemBytes, 64u);
}

}  // namespace
}  // namespace v4rt::kernels::cuda
