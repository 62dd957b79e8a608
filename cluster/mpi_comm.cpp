// SPDX-License-Identifier: MIT
// MpiComm: non-blocking MPI collectives completed under a deadline (see mpi_comm.h).
//
// Timeout diagnosis, on the private communicator diag_:
//   a rank whose collective passes its deadline sends a probe {seq, kind} to every peer and waits
//   a short grace period for answers; every rank that is itself waiting in a collective of this
//   group answers {its seq, its kind} from its polling loop. Peers that answer with the same seq
//   arrived; peers that answer with another seq are in a different collective; peers that do not
//   answer are not in any collective of this group (busy elsewhere, hung or dead). The message
//   names them by world rank, then LOG(FATAL) aborts the job.
#include "cluster/mpi_comm.h"

#include <glog/logging.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <numeric>
#include <sstream>
#include <thread>

#include "cluster/check.h"

namespace v4rt::cluster {
namespace {

constexpr int kProbeTag = 7001;
constexpr int kAnswerTag = 7002;
constexpr uint64_t kNoAnswer = ~uint64_t(0);

int to_int(int64_t v, const char* what) {
  CHECK(v >= 0 && v <= INT_MAX) << what << " = " << v << " does not fit an MPI count";
  return int(v);
}

std::vector<int> to_ints(std::span<const int64_t> v, int expect, const char* what) {
  CHECK_EQ(int(v.size()), expect) << what << " needs one entry per rank";
  std::vector<int> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = to_int(v[i], what);
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string join(const std::vector<int>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
  os << "]";
  return os.str();
}

}  // namespace

MPI_Datatype mpi_datatype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
    case DType::kF16:
    case DType::kBF16: return MPI_UINT16_T;
    case DType::kF8E4M3:
    case DType::kF8E8M0:
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
    case DType::kFP4: return MPI_UINT8_T;
  }
  LOG(FATAL) << "no MPI datatype for dtype " << int(dtype);
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op, DType dtype) {
  CHECK(dtype == DType::kF32 || dtype == DType::kF64 || dtype == DType::kI32 ||
        dtype == DType::kI64)
      << "MPI reductions support F32/F64/I32/I64, not " << dtype_name(dtype);
  return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
}

std::vector<int> world_ranks_of(MPI_Comm comm) {
  int n = 0;
  MPI_CHECK(MPI_Comm_size(comm, &n));
  MPI_Group group, world_group;
  MPI_CHECK(MPI_Comm_group(comm, &group));
  MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &world_group));
  std::vector<int> mine(static_cast<size_t>(n)), out(static_cast<size_t>(n));
  std::iota(mine.begin(), mine.end(), 0);
  MPI_CHECK(MPI_Group_translate_ranks(group, n, mine.data(), world_group, out.data()));
  MPI_CHECK(MPI_Group_free(&group));
  MPI_CHECK(MPI_Group_free(&world_group));
  return out;
}

MpiComm::MpiComm(MPI_Comm comm, CommOptions options, std::vector<int> world_ranks)
    : Comm(std::move(options), world_ranks.empty() ? world_ranks_of(comm) : std::move(world_ranks)) {
  MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  MPI_CHECK(MPI_Comm_dup(comm, &diag_));
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_set_errhandler(diag_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  CHECK_EQ(int(this->world_ranks().size()), size_) << "group " << name() << ": world_ranks size";
  answer_buf_.assign(size_t(size_) * 2, 0);
}

MpiComm::~MpiComm() {
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (finalised) return;
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (diag_ != MPI_COMM_NULL) MPI_Comm_free(&diag_);
}

// ---- waiting under a deadline --------------------------------------------------------------------

void MpiComm::answer_probes() {
  for (;;) {
    int flag = 0;
    MPI_Status status;
    MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, kProbeTag, diag_, &flag, &status));
    if (!flag) return;
    uint64_t probe[2];
    MPI_CHECK(MPI_Recv(probe, 2, MPI_UINT64_T, status.MPI_SOURCE, kProbeTag, diag_,
                       MPI_STATUS_IGNORE));
    uint64_t* answer = &answer_buf_[size_t(status.MPI_SOURCE) * 2];
    answer[0] = seq_;
    answer[1] = uint64_t(int64_t(in_kind_));
    MPI_Request request;
    MPI_CHECK(MPI_Isend(answer, 2, MPI_UINT64_T, status.MPI_SOURCE, kAnswerTag, diag_, &request));
    MPI_CHECK(MPI_Request_free(&request));
  }
}

void MpiComm::wait(MPI_Request* request, CollectiveKind kind) {
  in_kind_ = int(kind);
  const auto t0 = std::chrono::steady_clock::now();
  const double timeout = options().timeout_s;
  int flag = 0;
  // Spin briefly (latency), then back off with short sleeps so waiting ranks leave the CPU to
  // ranks that still compute (tests run many ranks on few cores).
  for (int iter = 0;; ++iter) {
    MPI_CHECK(MPI_Test(request, &flag, MPI_STATUS_IGNORE));
    if (flag) break;
    if (size_ > 1) answer_probes();
    if (iter < 200) {
      sched_yield();
      continue;
    }
    const double waited = seconds_since(t0);
    if (timeout > 0 && waited > timeout) fail_timeout(kind, waited);
    std::this_thread::sleep_for(std::chrono::microseconds(iter < 2000 ? 20 : 200));
  }
  in_kind_ = -1;
}

std::vector<uint64_t> MpiComm::probe_peers(CollectiveKind kind) {
  const uint64_t probe[2] = {seq_, uint64_t(kind)};
  std::vector<uint64_t> answers(size_t(size_) * 2, kNoAnswer);
  std::vector<MPI_Request> sends, recvs(size_t(size_), MPI_REQUEST_NULL);
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    MPI_Request r;
    MPI_CHECK(MPI_Isend(probe, 2, MPI_UINT64_T, p, kProbeTag, diag_, &r));
    sends.push_back(r);
    MPI_CHECK(MPI_Irecv(&answers[size_t(p) * 2], 2, MPI_UINT64_T, p, kAnswerTag, diag_,
                        &recvs[size_t(p)]));
  }
  const double grace = std::clamp(options().timeout_s * 0.2, 0.5, 5.0);
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int done = 0;
    MPI_CHECK(MPI_Testall(int(recvs.size()), recvs.data(), &done, MPI_STATUSES_IGNORE));
    answer_probes();
    if (done || seconds_since(t0) > grace) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return answers;
}

void MpiComm::fail_timeout(CollectiveKind kind, double waited_s) {
  const std::vector<uint64_t> answers = probe_peers(kind);
  std::vector<int> arrived, absent;
  std::ostringstream elsewhere;
  for (int p = 0; p < size_; ++p) {
    const int w = world_ranks()[size_t(p)];
    const uint64_t peer_seq = answers[size_t(p) * 2];
    if (p == rank_ || peer_seq == seq_) {
      arrived.push_back(w);
    } else if (peer_seq == kNoAnswer) {
      absent.push_back(w);
    } else {
      const auto peer_kind = int64_t(answers[size_t(p) * 2 + 1]);
      elsewhere << " world rank " << w << " is in "
                << (peer_kind >= 0 ? collective_name(CollectiveKind(peer_kind)) : "no collective")
                << " #" << peer_seq << ";";
    }
  }
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  LOG(FATAL) << "collective " << collective_name(kind) << " #" << seq_ << " on group '" << name()
             << "' (world ranks " << join(world_ranks()) << ") timed out after " << waited_s
             << " s on world rank " << world_ranks()[size_t(rank_)] << " (host " << host
             << "); did not arrive: world ranks " << join(absent) << "; arrived: "
             << join(arrived) << ";" << elsewhere.str();
  __builtin_unreachable();
}

// ---- collectives ------------------------------------------------------------------------------------

void MpiComm::all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) {
  ++seq_;
  MPI_Request request;
  MPI_CHECK(MPI_Iallreduce(send == recv ? MPI_IN_PLACE : send, recv, to_int(count, "count"),
                           mpi_datatype(dtype), mpi_op(op, dtype), comm_, &request));
  wait(&request, CollectiveKind::kAllReduce);
  count_bytes(CollectiveKind::kAllReduce, all_reduce_bytes(size_, count, dtype));
}

void MpiComm::all_gather(const void* send, void* recv, int64_t count, DType dtype) {
  ++seq_;
  MPI_Request request;
  const int n = to_int(count, "count");
  MPI_CHECK(MPI_Iallgather(send, n, mpi_datatype(dtype), recv, n, mpi_datatype(dtype), comm_,
                           &request));
  wait(&request, CollectiveKind::kAllGather);
  count_bytes(CollectiveKind::kAllGather, uint64_t(size_ - 1) * uint64_t(count) * dtype_size(dtype));
}

void MpiComm::all_gatherv(const void* send, int64_t send_count, void* recv,
                          std::span<const int64_t> recv_counts,
                          std::span<const int64_t> recv_displs, DType dtype) {
  ++seq_;
  const std::vector<int> counts = to_ints(recv_counts, size_, "recv_counts");
  const std::vector<int> displs = to_ints(recv_displs, size_, "recv_displs");
  CHECK_EQ(int64_t(counts[size_t(rank_)]), send_count)
      << "all_gatherv on group " << name() << ": recv_counts[rank] != send_count";
  MPI_Request request;
  MPI_CHECK(MPI_Iallgatherv(send, to_int(send_count, "send_count"), mpi_datatype(dtype), recv,
                            counts.data(), displs.data(), mpi_datatype(dtype), comm_, &request));
  wait(&request, CollectiveKind::kAllGatherV);
  count_bytes(CollectiveKind::kAllGatherV,
              uint64_t(size_ - 1) * uint64_t(send_count) * dtype_size(dtype));
}

void MpiComm::reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                             ReduceOp op) {
  ++seq_;
  MPI_Request request;
  MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, to_int(recv_count, "recv_count"),
                                      mpi_datatype(dtype), mpi_op(op, dtype), comm_, &request));
  wait(&request, CollectiveKind::kReduceScatter);
  count_bytes(CollectiveKind::kReduceScatter,
              uint64_t(size_ - 1) * uint64_t(recv_count) * dtype_size(dtype));
}

void MpiComm::all_to_all(const void* send, void* recv, int64_t count, DType dtype) {
  ++seq_;
  MPI_Request request;
  const int n = to_int(count, "count");
  MPI_CHECK(MPI_Ialltoall(send, n, mpi_datatype(dtype), recv, n, mpi_datatype(dtype), comm_,
                          &request));
  wait(&request, CollectiveKind::kAllToAll);
  count_bytes(CollectiveKind::kAllToAll, uint64_t(size_ - 1) * uint64_t(count) * dtype_size(dtype));
}

void MpiComm::all_to_allv(const void* send, std::span<const int64_t> send_counts,
                          std::span<const int64_t> send_displs, void* recv,
                          std::span<const int64_t> recv_counts,
                          std::span<const int64_t> recv_displs, DType dtype) {
  ++seq_;
  const std::vector<int> sc = to_ints(send_counts, size_, "send_counts");
  const std::vector<int> sd = to_ints(send_displs, size_, "send_displs");
  const std::vector<int> rc = to_ints(recv_counts, size_, "recv_counts");
  const std::vector<int> rd = to_ints(recv_displs, size_, "recv_displs");
  MPI_Request request;
  MPI_CHECK(MPI_Ialltoallv(send, sc.data(), sd.data(), mpi_datatype(dtype), recv, rc.data(),
                           rd.data(), mpi_datatype(dtype), comm_, &request));
  wait(&request, CollectiveKind::kAllToAllV);
  count_bytes(CollectiveKind::kAllToAllV, all_to_allv_bytes(rank_, send_counts, dtype));
}

void MpiComm::broadcast(void* buf, int64_t count, DType dtype, int root) {
  ++seq_;
  CHECK(root >= 0 && root < size_) << "broadcast root " << root << " on group " << name();
  MPI_Request request;
  MPI_CHECK(MPI_Ibcast(buf, to_int(count, "count"), mpi_datatype(dtype), root, comm_, &request));
  wait(&request, CollectiveKind::kBroadcast);
  count_bytes(CollectiveKind::kBroadcast,
              rank_ == root ? uint64_t(size_ - 1) * uint64_t(count) * dtype_size(dtype) : 0);
}

bool MpiComm::barrier_within(double timeout_s, std::vector<int>* absent) {
  ++seq_;
  MPI_Request request;
  MPI_CHECK(MPI_Ibarrier(comm_, &request));
  in_kind_ = int(CollectiveKind::kBarrier);
  const auto t0 = std::chrono::steady_clock::now();
  int flag = 0;
  for (int iter = 0;; ++iter) {
    MPI_CHECK(MPI_Test(&request, &flag, MPI_STATUS_IGNORE));
    if (flag) break;
    if (size_ > 1) answer_probes();
    if (seconds_since(t0) > timeout_s) {
      const std::vector<uint64_t> answers = probe_peers(CollectiveKind::kBarrier);
      if (absent) {
        absent->clear();
        for (int p = 0; p < size_; ++p)
          if (p != rank_ && answers[size_t(p) * 2] != seq_) absent->push_back(world_ranks()[size_t(p)]);
      }
      in_kind_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(iter < 2000 ? 20 : 200));
  }
  in_kind_ = -1;
  count_bytes(CollectiveKind::kBarrier, 0);
  return true;
}

void MpiComm::barrier() {
  ++seq_;
  MPI_Request request;
  MPI_CHECK(MPI_Ibarrier(comm_, &request));
  wait(&request, CollectiveKind::kBarrier);
  count_bytes(CollectiveKind::kBarrier, 0);
}

}  // namespace v4rt::cluster
