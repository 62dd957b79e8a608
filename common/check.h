// SPDX-License-Identifier: MIT
// Failure handling. Two kinds of failure exist in v4rt:
//  - bad input at an edge (a config key, a checkpoint tensor, a request field): throw v4rt::Error
//    with a message that names the file/key/tensor; the CLI prints it as one line and exits 1, the
//    server answers 4xx and keeps serving.
//  - broken invariants inside: fail fast with glog CHECK / LOG(FATAL); cluster/ installs a failure
//    function that calls MPI_Abort so no peer waits forever in a collective.
#pragma once

#include <glog/logging.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace v4rt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
// Builds an Error message with stream syntax: V4RT_FAIL("tensor " << name << " is missing").
class ErrorBuilder {
 public:
  template <typename T>
  ErrorBuilder& operator<<(const T& v) {
    os_ << v;
    return *this;
  }
  [[noreturn]] void raise() const { throw Error(os_.str()); }

 private:
  std::ostringstream os_;
};
}  // namespace detail

}  // namespace v4rt

// Throws v4rt::Error built from a stream expression.
#define V4RT_FAIL(msg) (::v4rt::detail::ErrorBuilder() << msg).raise()
// Input validation at an edge: throws v4rt::Error when cond is false.
#define V4RT_REQUIRE(cond, msg) \
  do {                          \
    if (!(cond)) V4RT_FAIL(msg); \
  } while (0)
