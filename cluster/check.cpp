// SPDX-License-Identifier: MIT
// Rank context and MPI error text for MPI_CHECK (see check.h).
#include "cluster/check.h"

#include <mpi.h>
#include <unistd.h>

namespace v4rt::cluster {
namespace {
int g_device = -1;

int current_rank() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (!initialised || finalised) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
}  // namespace

void set_check_device(int device_index) { g_device = device_index; }
int check_device() { return g_device; }

std::string check_context() {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  return " (host " + std::string(host) + ", rank " + std::to_string(current_rank()) + ", device " +
         std::to_string(g_device) + ")";
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error";
  return std::string(text, size_t(len));
}

}  // namespace v4rt::cluster
