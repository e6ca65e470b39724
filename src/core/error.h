// Error: the one exception type for user-facing failures; its message is one line saying what and
// where.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lancet {

// Thrown for every failure caused by input (files, configs, flags). The CLI prints the message on
// one line and exits with status 1. Programming errors use assert, not this.
class Error : public std::runtime_error {
  public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Streams the pieces together and throws an Error: fail(path, ": tensor ", name, " missing").
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    throw Error(os.str());
}

}  // namespace lancet
