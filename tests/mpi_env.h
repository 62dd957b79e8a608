// SPDX-License-Identifier: MIT
// The Open MPI environment of every test that starts `mpirun` itself: allowed as root (CI and
// containers run as root), the ob1 PML over self/vader/tcp (no fabric hardware needed), and
// oversubscription (more ranks than cores). Tests registered under mpirun by CTest get the same
// variables from V4RT_MPI_TEST_ENV (tests/v4rt_add_test.cmake);
// tests/cluster/test_mpi_env.cpp checks that the two lists are equal.
#pragma once

#include <cstdlib>

namespace v4rt::testing {

struct EnvVar {
  const char* name;
  const char* value;
};

inline constexpr EnvVar kMpirunEnv[] = {
    {"OMPI_ALLOW_RUN_AS_ROOT", "1"},
    {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"},
    {"OMPI_MCA_pml", "ob1"},
    {"OMPI_MCA_btl", "self,vader,tcp"},
    {"OMPI_MCA_rmaps_base_oversubscribe", "1"},
};

// Sets kMpirunEnv in this process, so that every `mpirun` it starts afterwards inherits it.
inline void set_mpirun_env() {
  for (const EnvVar& v : kMpirunEnv) setenv(v.name, v.value, /*overwrite=*/1);
}

}  // namespace v4rt::testing
