// SPDX-License-Identifier: MIT
// tests/mpi_env.h, the environment of the tests that start mpirun themselves, equals
// V4RT_MPI_TEST_ENV, the environment CTest gives the tests it runs under mpirun (passed to this
// test by CMake, '|'-separated); set_mpirun_env() sets every variable, overwriting what was there.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iterator>
#include <set>
#include <sstream>
#include <string>

#include "tests/mpi_env.h"

namespace v4rt::testing {
namespace {

TEST(MpiEnv, HeaderListEqualsCtestList) {
  const char* from_cmake = std::getenv("V4RT_MPI_TEST_ENV");
  ASSERT_NE(from_cmake, nullptr) << "V4RT_MPI_TEST_ENV not set: run this test through ctest";
  std::set<std::string> cmake;
  std::istringstream in(from_cmake);
  for (std::string item; std::getline(in, item, '|');) cmake.insert(item);
  std::set<std::string> header;
  for (const EnvVar& v : kMpirunEnv) header.insert(std::string(v.name) + "=" + v.value);
  EXPECT_EQ(header, cmake) << "tests/mpi_env.h and V4RT_MPI_TEST_ENV (tests/v4rt_add_test.cmake) differ";
  EXPECT_EQ(header.size(), std::size(kMpirunEnv)) << "a variable listed twice in tests/mpi_env.h";
}

TEST(MpiEnv, SetMpirunEnvSetsEveryVariable) {
  for (const EnvVar& v : kMpirunEnv) unsetenv(v.name);
  setenv("OMPI_MCA_pml", "ucx", 1);  // a value from the caller's environment is overwritten
  set_mpirun_env();
  for (const EnvVar& v : kMpirunEnv) {
    const char* got = std::getenv(v.name);
    ASSERT_NE(got, nullptr) << v.name;
    EXPECT_STREQ(got, v.value) << v.name;
  }
}

}  // namespace
}  // namespace v4rt::testing
