// SPDX-License-Identifier: MIT
// ConnectionGate and Connection: admission, the gate thread's poll loop (headers and keep-alive),
// the worker threads, and the socket I/O cpp-httplib's parser reads and writes through.
//
// NOTE: a connection is owned by exactly one place at a time: the gate's inbox, the gate thread's
// waiting list, the ready queue, or one worker (listed in busy_ so stop() can end its reads).
#include "launch/serve/http_connections.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include <glog/logging.h>

namespace v4rt::launch::serve {

namespace {

using Clock = Connection::Clock;

thread_local Connection* t_current = nullptr;

constexpr size_t kRecvChunk = 16 << 10;
constexpr auto kGateMaxSleep = std::chrono::milliseconds(1000);
// After a refused or aborted request the unread rest of its body is drained for a moment, so the
// client reads the error response instead of a connection reset.
constexpr auto kLingerTime = std::chrono::milliseconds(1000);
constexpr size_t kLingerMaxBytes = size_t(64) << 20;

Clock::duration seconds(double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); }

int poll_ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count() + 1;
  return int(std::clamp<int64_t>(left, 0, INT_MAX));
}

// ip and port of a socket address (IPv4 or IPv6).
void address_of(const sockaddr_storage& a, std::string* ip, int* port) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    *port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    *port = ntohs(in6->sin6_port);
  } else {
    *port = 0;
  }
  *ip = text;
}

std::string peer_ip(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  std::string ip;
  int port = 0;
  address_of(a, &ip, &port);
  return ip;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    default: return "Service Unavailable";
  }
}

// Best effort, never blocks: the socket buffer of a fresh connection takes a small response.
void send_now(int fd, int status, const std::string& body) {
  const std::string response = "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) +
                               "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                               "\r\nConnection: close\r\n\r\n" + body;
  (void)::send(fd, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// Closes after a response that left request bytes unread: FIN first, then drain for a moment.
void lingering_close(int fd) {
  ::shutdown(fd, SHUT_WR);
  const Clock::time_point until = Clock::now() + kLingerTime;
  char sink[kRecvChunk];
  size_t drained = 0;
  while (drained < kLingerMaxBytes) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, poll_ms_until(until));
    if (r <= 0) break;
    const ssize_t n = ::recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
    if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) break;
    if (n > 0) drained += size_t(n);
    if (Clock::now() >= until) break;
  }
  ::close(fd);
}

}  // namespace

Connection* current_connection() { return t_current; }

// ----- Connection --------------------------------------------------------------------------------

Connection::Connection(int fd, std::string peer, const ConnectionLimits& limits)
    : fd_(fd), peer_(std::move(peer)), limits_(limits), deadline_(Clock::now() + seconds(limits.receive_timeout_s)) {
  const int flags = fcntl(fd_, F_GETFL, 0);
  if (flags >= 0) fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
}

Connection::~Connection() {
  if (close_after_) {
    lingering_close(fd_);
  } else {
    ::close(fd_);
  }
}

bool Connection::wait_io(short events, Clock::time_point deadline) const {
  for (;;) {
    pollfd p{fd_, events, 0};
    const int r = ::poll(&p, 1, poll_ms_until(deadline));
    if (r > 0) return true;  // ready, or an error/hangup the next call reports
    if (r < 0 && errno == EINTR) continue;
    if (r == 0 && Clock::now() < deadline) continue;
    return false;
  }
}

bool Connection::is_readable() const {
  return buf_pos_ < buf_.size() || wait_io(POLLIN, deadline_);
}

bool Connection::is_writable() const { return wait_io(POLLOUT, Clock::now() + seconds(limits_.write_timeout_s)); }

ssize_t Connection::read(char* ptr, size_t size) {
  if (buf_pos_ < buf_.size()) {
    const size_t n = std::min(size, buf_.size() - buf_pos_);
    std::memcpy(ptr, buf_.data() + buf_pos_, n);
    buf_pos_ += n;
    if (buf_pos_ == buf_.size()) {
      buf_.clear();
      buf_pos_ = 0;
    }
    return ssize_t(n);
  }
  for (;;) {
    const ssize_t n = ::recv(fd_, ptr, size, 0);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    // The deadline covers the whole request, however slowly its bytes arrive.
    if (!wait_io(POLLIN, deadline_)) {
      receive_timed_out_ = true;
      return -1;
    }
  }
}

ssize_t Connection::write(const char* ptr, size_t size) {
  size_t off = 0;
  Clock::time_point deadline = Clock::now() + seconds(limits_.write_timeout_s);
  while (off < size) {
    const ssize_t n = ::send(fd_, ptr + off, size - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += size_t(n);
      deadline = Clock::now() + seconds(limits_.write_timeout_s);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_io(POLLOUT, deadline)) continue;
    return -1;
  }
  return ssize_t(size);
}

void Connection::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  port = 0;
  if (getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) address_of(a, &ip, &port);
}

void Connection::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  port = 0;
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) address_of(a, &ip, &port);
}

bool Connection::client_alive() const {
  pollfd p{fd_, short(POLLIN | POLLRDHUP), 0};
  if (::poll(&p, 1, 0) <= 0) return true;
  if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return false;
  if (p.revents & POLLIN) {
    char byte;
    const ssize_t n = ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
  }
  return true;
}

bool Connection::headers_complete() const {
  const std::string_view pending(buf_.data() + buf_pos_, buf_.size() - buf_pos_);
  return pending.find("\r\n\r\n") != std::string_view::npos || pending.find("\n\n") != std::string_view::npos;
}

// ----- ConnectionGate ----------------------------------------------------------------------------

ConnectionGate::ConnectionGate(const ConnectionLimits& limits, Serve serve, ErrorBody error_body)
    : limits_(limits), serve_(std::move(serve)), error_body_(std::move(error_body)) {
  // Every open connection is a descriptor the gate polls: raise the soft descriptor limit to the
  // hard one and keep max_connections below it (with room for the model's files and the rest).
  constexpr int64_t kReservedFds = 128;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    const int64_t usable = std::max<int64_t>(1, int64_t(std::min<rlim_t>(rl.rlim_cur, 1 << 30)) - kReservedFds);
    if (limits_.max_connections > usable) {
      LOG(WARNING) << "server: max_connections " << limits_.max_connections << " exceeds the descriptor limit "
                   << rl.rlim_cur << "; using " << usable;
      limits_.max_connections = int(usable);
    }
  }
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  PCHECK(wake_fd_ >= 0) << "server: eventfd";
  gate_thread_ = std::thread([this] { gate_loop(); });
  for (int i = 0; i < std::max(1, limits_.workers); ++i) workers_.emplace_back([this] { worker_loop(); });
}

ConnectionGate::~ConnectionGate() {
  stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

int ConnectionGate::open_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return open_;
}

void ConnectionGate::wake() {
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
}

void ConnectionGate::refuse(int fd, int status, const std::string& message) {
  ++refused_;
  send_now(fd, status, error_body_(status, message));
  ::close(fd);
}

void ConnectionGate::admit(int fd) {
  const std::string peer = peer_ip(fd);
  int refusal = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      refusal = 503;
    } else if (open_ >= limits_.max_connections) {
      refusal = 503;
    } else if (per_client_[peer] >= limits_.max_connections_per_client) {
      refusal = 429;
    } else {
      ++open_;
      ++per_client_[peer];
      inbox_.push_back(std::make_unique<Connection>(fd, peer, limits_));
    }
    if (refusal && per_client_[peer] == 0) per_client_.erase(peer);
  }
  if (refusal == 503) {
    LOG_EVERY_N(WARNING, 100) << "server: " << limits_.max_connections << " connections open; refusing more";
    return refuse(fd, 503, "the server has too many open connections (server.max_connections " +
                               std::to_string(limits_.max_connections) + "); retry later");
  }
  if (refusal == 429) {
    LOG_EVERY_N(WARNING, 100) << "server: client " << peer << " has " << limits_.max_connections_per_client
                              << " connections open; refusing more";
    return refuse(fd, 429, "too many open connections from " + peer + " (server.max_connections_per_client " +
                               std::to_string(limits_.max_connections_per_client) + ")");
  }
  wake();
}

void ConnectionGate::close(std::unique_ptr<Connection> c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --open_;
    auto it = per_client_.find(c->peer());
    if (it != per_client_.end() && --it->second <= 0) per_client_.erase(it);
  }
  c.reset();
}

void ConnectionGate::to_gate(std::unique_ptr<Connection> c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      inbox_.push_back(std::move(c));
      c = nullptr;
    }
  }
  if (c) return close(std::move(c));
  wake();
}

void ConnectionGate::to_workers(std::unique_ptr<Connection> c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      ready_.push_back(std::move(c));
      c = nullptr;
    }
  }
  if (c) return close(std::move(c));
  ready_cv_.notify_one();
}

void ConnectionGate::gate_loop() {
  std::vector<std::unique_ptr<Connection>> waiting;
  std::vector<pollfd> fds;
  char chunk[kRecvChunk];
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
      for (auto& c : inbox_) waiting.push_back(std::move(c));
      inbox_.clear();
    }
    Clock::time_point next = Clock::now() + kGateMaxSleep;
    fds.assign(1, pollfd{wake_fd_, POLLIN, 0});
    for (const auto& c : waiting) {
      fds.push_back(pollfd{c->fd_, POLLIN, 0});
      next = std::min(next, c->deadline_);
    }
    const int r = ::poll(fds.data(), nfds_t(fds.size()), poll_ms_until(next));
    if (r < 0 && errno != EINTR) {
      PLOG_EVERY_N(ERROR, 100) << "server: poll over " << fds.size() << " connections";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (fds[0].revents & POLLIN) {
      uint64_t n;
      (void)!::read(wake_fd_, &n, sizeof(n));
    }
    const Clock::time_point now = Clock::now();
    // fds[i + 1] belongs to waiting[i]; the list is compacted in place.
    size_t kept = 0;
    for (size_t i = 0; i < waiting.size(); ++i) {
      std::unique_ptr<Connection> c = std::move(waiting[i]);
      const short revents = r > 0 ? fds[i + 1].revents : 0;
      bool closed = false;
      if (revents) {
        for (;;) {
          const ssize_t n = ::recv(c->fd_, chunk, sizeof(chunk), 0);
          if (n > 0) {
            if (c->idle_) {  // the first byte of the next request starts its receive deadline
              c->idle_ = false;
              c->deadline_ = now + seconds(limits_.receive_timeout_s);
            }
            c->buf_.append(chunk, size_t(n));
            if (c->buf_.size() > limits_.max_header_bytes) break;
            continue;
          }
          if (n < 0 && errno == EINTR) continue;
          closed = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
          break;
        }
      }
      if (closed) {
        close(std::move(c));
      } else if (c->headers_complete()) {
        to_workers(std::move(c));
      } else if (c->buf_.size() > limits_.max_header_bytes) {
        send_now(c->fd_, 431, error_body_(431, "the request headers exceed " +
                                                    std::to_string(limits_.max_header_bytes) + " bytes"));
        close(std::move(c));
      } else if (now >= c->deadline_) {
        if (!c->idle_) {
          ++receive_timeouts_;
          send_now(c->fd_, 408, error_body_(408, "the request headers did not arrive within server.receive_timeout_s (" +
                                                     std::to_string(int(limits_.receive_timeout_s)) + " s)"));
        }
        close(std::move(c));
      } else {
        waiting[kept++] = std::move(c);
      }
    }
    waiting.resize(kept);
  }
  for (auto& c : waiting) close(std::move(c));
}

void ConnectionGate::worker_loop() {
  for (;;) {
    std::unique_ptr<Connection> c;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ready_cv_.wait(lock, [this] { return stopping_ || !ready_.empty(); });
      if (stopping_) return;
      c = std::move(ready_.front());
      ready_.pop_front();
      busy_.insert(c.get());
    }
    ++c->requests_;
    bool keep = false;
    t_current = c.get();
    try {
      keep = serve_(*c, c->requests_ >= limits_.max_requests_per_connection);
    } catch (const std::exception& e) {
      LOG(WARNING) << "server: request from " << c->peer() << " failed: " << e.what();
    }
    t_current = nullptr;
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_.erase(c.get());
      stopping = stopping_;
    }
    if (!keep || c->close_after_ || c->receive_timed_out_ || stopping) {
      close(std::move(c));
      continue;
    }
    // The next request on this connection: pipelined bytes may already be buffered.
    c->buf_.erase(0, c->buf_pos_);
    c->buf_pos_ = 0;
    const Clock::time_point now = Clock::now();
    if (c->headers_complete()) {
      c->deadline_ = now + seconds(limits_.receive_timeout_s);
      to_workers(std::move(c));
    } else {
      c->idle_ = c->buf_.empty();
      c->deadline_ = now + seconds(c->idle_ ? limits_.keep_alive_timeout_s : limits_.receive_timeout_s);
      to_gate(std::move(c));
    }
  }
}

void ConnectionGate::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    // Requests being received end now; responses being written still go out.
    for (Connection* c : busy_) ::shutdown(c->fd_, SHUT_RD);
  }
  wake();
  ready_cv_.notify_all();
  if (gate_thread_.joinable()) gate_thread_.join();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  std::vector<std::unique_ptr<Connection>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& c : inbox_) left.push_back(std::move(c));
    for (auto& c : ready_) left.push_back(std::move(c));
    inbox_.clear();
    ready_.clear();
  }
  for (auto& c : left) close(std::move(c));
}

}  // namespace v4rt::launch::serve
