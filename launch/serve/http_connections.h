// SPDX-License-Identifier: MIT
// The connection layer under the HTTP server. cpp-httplib 0.11 gives every accepted connection a
// pool thread for its whole life, so slow or idle clients can hold every thread. Here the accept
// thread only admits a connection (bounded in total and per client address; the excess gets a
// quick 503/429 and is closed) and hands it to one gate thread that polls every connection waiting
// for a request; a connection reaches a worker thread only once its request headers are complete.
// Receiving a request (headers and body) has one deadline from its first byte (from accept for a
// new connection); after a response the connection goes back to the gate for keep-alive, not to a
// worker. Workers run cpp-httplib's request processing on a Connection (an httplib::Stream).
#pragma once

#include <httplib.h>

#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

namespace v4rt::launch::serve {

struct ConnectionLimits {
  int max_connections = 1024;         // open connections in total; more get 503 and are closed
  int max_connections_per_client = 256;  // per client address; more get 429 and are closed
  double receive_timeout_s = 30;      // headers + body of one request; past it 408 and close
  double keep_alive_timeout_s = 5;    // idle time between requests before the gate closes it
  double write_timeout_s = 10;        // a client that reads nothing for this long is dropped
  size_t max_header_bytes = 64 << 10; // request line + headers; more gets 431
  int workers = 8;                    // threads running requests (generations hold one each)
  int max_requests_per_connection = 1000;
};

// One accepted socket (non-blocking) with the bytes read ahead of the parser.
class Connection final : public httplib::Stream {
 public:
  using Clock = std::chrono::steady_clock;
  Connection(int fd, std::string peer, const ConnectionLimits& limits);
  ~Connection() override;

  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  socket_t socket() const override { return fd_; }

  const std::string& peer() const { return peer_; }
  // False once the client has closed or reset its side (polled, never blocks).
  bool client_alive() const;
  // The request's receive deadline passed while the parser waited for bytes.
  bool receive_timed_out() const { return receive_timed_out_; }
  // Ends the connection after the current response (unread body bytes, a refused request).
  void close_after_response() { close_after_ = true; }

 private:
  friend class ConnectionGate;
  bool wait_io(short events, Clock::time_point deadline) const;
  bool headers_complete() const;

  int fd_;
  std::string peer_;
  const ConnectionLimits& limits_;
  std::string buf_;          // bytes received and not yet consumed by the parser
  size_t buf_pos_ = 0;
  Clock::time_point deadline_;  // receive deadline (in the gate: also the keep-alive deadline)
  bool idle_ = false;        // waiting in the gate for the first byte of a keep-alive request
  bool receive_timed_out_ = false;
  bool close_after_ = false;
  int requests_ = 0;
};

// The connection being served by the calling worker thread (nullptr elsewhere).
Connection* current_connection();

class ConnectionGate {
 public:
  // Serves one request on `c` (parsing, routing, response); returns false to close it.
  using Serve = std::function<bool(Connection& c, bool last_request)>;
  // The body of a refusal the gate sends itself (status 408, 429, 431, 503).
  using ErrorBody = std::function<std::string(int status, const std::string& message)>;

  ConnectionGate(const ConnectionLimits& limits, Serve serve, ErrorBody error_body);
  ~ConnectionGate();
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  // From the accept thread: takes ownership of `fd`; refuses it at once over a bound.
  void admit(int fd);
  // Closes waiting connections, ends the reads of busy ones and joins the threads.
  void stop();

  int open_connections() const;
  uint64_t refused_connections() const { return refused_; }
  uint64_t receive_timeouts() const { return receive_timeouts_; }

 private:
  void gate_loop();
  void worker_loop();
  void to_gate(std::unique_ptr<Connection> c);
  void to_workers(std::unique_ptr<Connection> c);
  void close(std::unique_ptr<Connection> c);
  void refuse(int fd, int status, const std::string& message);
  void wake();

  ConnectionLimits limits_;  // set in the constructor, read-only once the threads run
  Serve serve_;
  ErrorBody error_body_;
  int wake_fd_ = -1;  // eventfd: new work for the gate thread

  mutable std::mutex mu_;
  std::condition_variable ready_cv_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Connection>> inbox_;   // for the gate thread
  std::deque<std::unique_ptr<Connection>> ready_;    // complete headers, for a worker
  std::unordered_set<Connection*> busy_;             // held by workers
  std::map<std::string, int> per_client_;
  int open_ = 0;
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> receive_timeouts_{0};

  std::thread gate_thread_;
  std::vector<std::thread> workers_;
};

}  // namespace v4rt::launch::serve
