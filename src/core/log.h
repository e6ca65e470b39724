// Minimal leveled logging to stderr; the CLI sets the level from -v / -q.
#pragma once

#include <cstdio>
#include <sstream>
#include <string>

namespace lancet {

enum class LogLevel { Quiet = 0, Info = 1, Debug = 2 };

inline LogLevel& log_level() {
    static LogLevel level = LogLevel::Info;
    return level;
}

template <typename... Args>
void log_info(const Args&... args) {
    if (log_level() < LogLevel::Info) return;
    std::ostringstream os;
    (os << ... << args);
    std::fprintf(stderr, "%s\n", os.str().c_str());
}

// "lancet: warning: ..." on stderr, also under -q (a warning changes what the result means).
template <typename... Args>
void log_warn(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    std::fprintf(stderr, "lancet: warning: %s\n", os.str().c_str());
}

template <typename... Args>
void log_debug(const Args&... args) {
    if (log_level() < LogLevel::Debug) return;
    std::ostringstream os;
    (os << ... << args);
    std::fprintf(stderr, "%s\n", os.str().c_str());
}

}  // namespace lancet
