// SPDX-License-Identifier: MIT
// NcclComm (see nccl_comm.h). Variable-size collectives (all_gatherv, all_to_all(v)) are grouped
// point-to-point sends/receives; the local block is a device copy. Byte-typed payloads (FP8, raw
// bytes) travel as ncclUint8; reductions take F32/BF16/F16/F64/I32/I64 only.
#include "cluster/nccl_comm.h"

#include "cluster/mpi_comm.h"

#include <unistd.h>

#include <chrono>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/status_check.h"

namespace v4rt::cluster {

namespace {

std::string nccl_context() {
  int dev = -1;
  (void)cudaGetDevice(&dev);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::ostringstream os;
  os << " [device " << dev << ", host " << host << "; last NCCL error: " << ncclGetLastError(nullptr) << "]";
  return os.str();
}
std::string cuda_context() { return nccl_context(); }

#define NCCL_CHECK(expr) V4RT_CHECK_GEN(expr, ncclSuccess, ncclGetErrorString, nccl_context)
#define CUDA_RT_CHECK(expr) V4RT_CHECK_GEN(expr, cudaSuccess, cudaGetErrorString, cuda_context)
#define MPI_CHECK(expr) V4RT_CHECK_GEN(expr, MPI_SUCCESS, mpi_error_string, std::string)

const char* mpi_error_string(int code) {
  static thread_local char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return buf;
}

// Element type on the wire; `elems` is scaled for byte-typed payloads.
ncclDataType_t wire_type(DType dtype, int64_t* elems, bool reduce) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    case DType::kF64: return ncclFloat64;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
    default:
      CHECK(!reduce) << "NCCL reduction over " << dtype_name(dtype) << " is not supported";
      *elems *= int64_t(dtype_size(dtype));
      return ncclUint8;
  }
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kMax ? ncclMax : ncclSum; }

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int bind_local_device(int local_rank) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) V4RT_FAIL("no CUDA device for the NCCL backend");
  const int dev = local_rank % count;
  CUDA_RT_CHECK(cudaSetDevice(dev));
  return dev;
}

NcclComm::NcclComm(MPI_Comm comm, CommOptions options, std::vector<int> world_ranks, cudaStream_t stream)
    : Comm(std::move(options), world_ranks.empty() ? world_ranks_of(comm) : std::move(world_ranks)) {
  MPI_CHECK(MPI_Comm_rank(comm, &rank_));
  MPI_CHECK(MPI_Comm_size(comm, &size_));
  CUDA_RT_CHECK(cudaGetDevice(&device_));
  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // start-up and collectives can then be bounded by the deadline
  last_op_ = "ncclCommInitRankConfig";
  check(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "ncclCommInitRankConfig");
  CUDA_RT_CHECK(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
  stream_ = stream ? stream : own_stream_;
  CUDA_RT_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  CUDA_RT_CHECK(cudaMalloc(&barrier_buf_, sizeof(float)));
  CommWatchdog::Probe probe;
  probe.async_error = [this]() -> std::string {
    ncclResult_t st = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(comm_, &st);
    if (q != ncclSuccess) return std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(q);
    if (st != ncclSuccess && st != ncclInProgress) return ncclGetErrorString(st);
    return "";
  };
  probe.work_done = [this] { return cudaEventQuery(done_) != cudaErrorNotReady; };
  watchdog_ = std::make_unique<CommWatchdog>(
      "watchdog", this->options().timeout_s, std::move(probe),
      [this](const std::string& why) { fail(why); });
  VLOG(1) << who() << ": ready";
}

NcclComm::~NcclComm() {
  watchdog_.reset();
  if (comm_) {
    (void)cudaStreamSynchronize(stream_);
    ncclCommFinalize(comm_);
    ncclResult_t st = ncclInProgress;
    const double deadline = now_s() + 10.0;
    while (ncclCommGetAsyncError(comm_, &st) == ncclSuccess && st == ncclInProgress && now_s() < deadline)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (st == ncclSuccess) ncclCommDestroy(comm_);
    else ncclCommAbort(comm_);
  }
  if (barrier_buf_) (void)cudaFree(barrier_buf_);
  if (done_) (void)cudaEventDestroy(done_);
  if (own_stream_) (void)cudaStreamDestroy(own_stream_);
}

std::string NcclComm::who() const {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const int world_rank = size_t(rank_) < world_ranks().size() ? world_ranks()[size_t(rank_)] : -1;
  return "NCCL communicator '" + name() + "' (world rank " + std::to_string(world_rank) + ", rank " +
         std::to_string(rank_) + " of " + std::to_string(size_) + ", device " + std::to_string(device_) +
         ", host " + host + ")";
}

void NcclComm::set_stream(StreamHandle stream) {
  stream_ = stream ? static_cast<cudaStream_t>(stream) : own_stream_;
}

void NcclComm::mark_enqueued() {
  watchdog_->enqueued([this] { (void)cudaEventRecord(done_, stream_); });
}

void NcclComm::fail(const std::string& why) {
  const std::string msg = who() + ": " + why + " during " + last_op_;
  // Abort first: it unblocks kernels of this communicator that wait for a dead peer.
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
  LOG(FATAL) << msg;
  std::abort();
}

void NcclComm::wait_ready(const char* what) {
  const double timeout = options().timeout_s;
  const double deadline = now_s() + (timeout > 0 ? timeout : 1e30);
  for (;;) {
    ncclResult_t st = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(comm_, &st);
    if (q != ncclSuccess) fail(std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(q));
    if (st == ncclSuccess) return;
    if (st != ncclInProgress) fail(std::string(what) + ": " + ncclGetErrorString(st) + " (" + ncclGetLastError(comm_) + ")");
    if (now_s() > deadline) fail(std::string(what) + ": not ready after " + std::to_string(timeout) + " s");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclComm::check(ncclResult_t result, const char* what, bool poll) {
  if (result == ncclSuccess || result == ncclInProgress) {
    if (poll) wait_ready(what);
    return;
  }
  fail(std::string(what) + ": " + ncclGetErrorString(result) + " (" + ncclGetLastError(comm_) + ")");
}

void NcclComm::synchronize() {
  const double timeout = options().timeout_s;
  const double deadline = now_s() + (timeout > 0 ? timeout : 1e30);
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream_);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) fail(std::string("stream error: ") + cudaGetErrorString(q));
    ncclResult_t st = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess || (st != ncclSuccess && st != ncclInProgress))
      fail(std::string("asynchronous error: ") + ncclGetErrorString(st));
    if (now_s() > deadline) fail("collective did not complete within " + std::to_string(timeout) + " s");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclComm::copy_local(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) CUDA_RT_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void NcclComm::all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) {
  last_op_ = "all_reduce";
  int64_t n = count;
  const ncclDataType_t t = wire_type(dtype, &n, true);
  check(ncclAllReduce(send, recv, size_t(n), t, nccl_op(op), comm_, stream_), "ncclAllReduce");
  mark_enqueued();
  count_bytes(CollectiveKind::kAllReduce, all_reduce_bytes(size_, count, dtype));
}

void NcclComm::all_gather(const void* send, void* recv, int64_t count, DType dtype) {
  last_op_ = "all_gather";
  int64_t n = count;
  const ncclDataType_t t = wire_type(dtype, &n, false);
  check(ncclAllGather(send, recv, size_t(n), t, comm_, stream_), "ncclAllGather");
  mark_enqueued();
  count_bytes(CollectiveKind::kAllGather, uint64_t(size_ - 1) * uint64_t(count) * dtype_size(dtype));
}

void NcclComm::all_gatherv(const void* send, int64_t send_count, void* recv, std::span<const int64_t> recv_counts,
                           std::span<const int64_t> recv_displs, DType dtype) {
  last_op_ = "all_gatherv";
  CHECK_EQ(int(recv_counts.size()), size_);
  CHECK_EQ(int(recv_displs.size()), size_);
  CHECK_EQ(recv_counts[size_t(rank_)], send_count) << "all_gatherv: own block size";
  const size_t es = dtype_size(dtype);
  check(ncclGroupStart(), "ncclGroupStart", false);
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    if (send_count > 0) check(ncclSend(send, size_t(send_count) * es, ncclUint8, p, comm_, stream_), "ncclSend", false);
    if (recv_counts[size_t(p)] > 0)
      check(ncclRecv(static_cast<char*>(recv) + size_t(recv_displs[size_t(p)]) * es, size_t(recv_counts[size_t(p)]) * es,
                     ncclUint8, p, comm_, stream_), "ncclRecv", false);
  }
  check(ncclGroupEnd(), "ncclGroupEnd");
  copy_local(static_cast<char*>(recv) + size_t(recv_displs[size_t(rank_)]) * es, send, size_t(send_count) * es);
  mark_enqueued();
  count_bytes(CollectiveKind::kAllGatherV, uint64_t(size_ - 1) * uint64_t(send_count) * es);
}

void NcclComm::reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype, ReduceOp op) {
  last_op_ = "reduce_scatter";
  int64_t n = recv_count;
  const ncclDataType_t t = wire_type(dtype, &n, true);
  check(ncclReduceScatter(send, recv, size_t(n), t, nccl_op(op), comm_, stream_), "ncclReduceScatter");
  mark_enqueued();
  count_bytes(CollectiveKind::kReduceScatter, uint64_t(size_ - 1) * uint64_t(recv_count) * dtype_size(dtype));
}

void NcclComm::all_to_all(const void* send, void* recv, int64_t count, DType dtype) {
  last_op_ = "all_to_all";
  const size_t bytes = size_t(count) * dtype_size(dtype);
  check(ncclGroupStart(), "ncclGroupStart", false);
  for (int p = 0; p < size_; ++p) {
    if (p == rank_ || bytes == 0) continue;
    check(ncclSend(static_cast<const char*>(send) + size_t(p) * bytes, bytes, ncclUint8, p, comm_, stream_), "ncclSend", false);
    check(ncclRecv(static_cast<char*>(recv) + size_t(p) * bytes, bytes, ncclUint8, p, comm_, stream_), "ncclRecv", false);
  }
  check(ncclGroupEnd(), "ncclGroupEnd");
  copy_local(static_cast<char*>(recv) + size_t(rank_) * bytes, static_cast<const char*>(send) + size_t(rank_) * bytes, bytes);
  mark_enqueued();
  count_bytes(CollectiveKind::kAllToAll, uint64_t(size_ - 1) * bytes);
}

void NcclComm::all_to_allv(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_displs,
                           void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                           DType dtype) {
  last_op_ = "all_to_allv";
  CHECK(int(send_counts.size()) == size_ && int(send_displs.size()) == size_ && int(recv_counts.size()) == size_ &&
        int(recv_displs.size()) == size_)
      << "all_to_allv: spans must have size() entries";
  const size_t es = dtype_size(dtype);
  check(ncclGroupStart(), "ncclGroupStart", false);
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    const size_t sp = size_t(p);
    if (send_counts[sp] > 0)
      check(ncclSend(static_cast<const char*>(send) + size_t(send_displs[sp]) * es, size_t(send_counts[sp]) * es,
                     ncclUint8, p, comm_, stream_), "ncclSend", false);
    if (recv_counts[sp] > 0)
      check(ncclRecv(static_cast<char*>(recv) + size_t(recv_displs[sp]) * es, size_t(recv_counts[sp]) * es, ncclUint8,
                     p, comm_, stream_), "ncclRecv", false);
  }
  check(ncclGroupEnd(), "ncclGroupEnd");
  const size_t r = size_t(rank_);
  CHECK_EQ(send_counts[r], recv_counts[r]) << "all_to_allv: own block sizes differ";
  copy_local(static_cast<char*>(recv) + size_t(recv_displs[r]) * es,
             static_cast<const char*>(send) + size_t(send_displs[r]) * es, size_t(send_counts[r]) * es);
  mark_enqueued();
  count_bytes(CollectiveKind::kAllToAllV, all_to_allv_bytes(rank_, send_counts, dtype));
}

void NcclComm::broadcast(void* buf, int64_t count, DType dtype, int root) {
  last_op_ = "broadcast";
  int64_t n = count;
  const ncclDataType_t t = wire_type(dtype, &n, false);
  check(ncclBroadcast(buf, buf, size_t(n), t, root, comm_, stream_), "ncclBroadcast");
  mark_enqueued();
  count_bytes(CollectiveKind::kBroadcast, rank_ == root ? uint64_t(size_ - 1) * uint64_t(count) * dtype_size(dtype) : 0);
}

void NcclComm::barrier() {
  last_op_ = "barrier";
  check(ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce(barrier)");
  synchronize();
  count_bytes(CollectiveKind::kBarrier, 0);
}

}  // namespace v4rt::cluster
