// Implementation of the temporary-output registry and the interruption cleanup thread.
#include "io/temp_output.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace lancet {

namespace fs = std::filesystem;

namespace {

struct Registry {
    std::mutex mu;  // held for good by the cleanup thread once a signal arrived
    std::vector<std::pair<int, std::string>> paths;
    int next_id = 0;
};

Registry& registry() {
    static Registry* r = new Registry;  // never destroyed: the cleanup thread may outlive main
    return *r;
}

std::atomic<bool> g_interrupted{false};

const char* signal_name(int sig) {
    switch (sig) {
        case SIGINT:
            return "SIGINT";
        case SIGTERM:
            return "SIGTERM";
        case SIGHUP:
            return "SIGHUP";
        default:
            return "a signal";
    }
}

// Removes a file or folder; a writer that was inside a system call when the lock was taken may
// still add an entry to a folder being removed, so a few passes are allowed.
bool remove_path(const std::string& p) {
    std::error_code ec;
    for (int pass = 0; pass < 5; ++pass) {
        const bool existed = fs::exists(fs::symlink_status(p, ec));
        if (!existed) return pass > 0;
        fs::remove_all(p, ec);
    }
    return !fs::exists(fs::symlink_status(p, ec));
}

[[noreturn]] void on_interrupt(int sig) {
    g_interrupted.store(true);
    Registry& r = registry();
    r.mu.lock();  // never released: registrations and commits wait until the process ends
    std::string removed;
    for (const auto& [id, path] : r.paths) {
        (void)id;
        if (!remove_path(path)) continue;
        removed += removed.empty() ? "" : ", ";
        removed += path;
    }
    if (removed.empty())
        std::fprintf(stderr, "lancet: interrupted by %s (no temporary output to remove)\n",
                     signal_name(sig));
    else
        std::fprintf(stderr, "lancet: interrupted by %s; removed the temporary output %s\n",
                     signal_name(sig), removed.c_str());
    std::fflush(stderr);
    _exit(128 + sig);
}

bool all_digits(const std::string& s) {
    if (s.empty() || s.size() > 10) return false;
    for (char c : s)
        if (c < '0' || c > '9') return false;
    return true;
}

}  // namespace

void install_interrupt_cleanup() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return;  // default actions stay
    registry();  // built before any signal can arrive
    std::thread([set] {
        int sig = 0;
        while (sigwait(&set, &sig) != 0) {
        }
        on_interrupt(sig);
    }).detach();
}

bool interrupted() { return g_interrupted.load(); }

void hold_if_interrupted() {
    if (!interrupted()) return;
    for (;;) pause();
}

TempRegistration::TempRegistration(std::string path) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    id_ = r.next_id++;
    r.paths.emplace_back(id_, std::move(path));
}

TempRegistration::~TempRegistration() {
    if (id_ < 0) return;
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (auto it = r.paths.begin(); it != r.paths.end(); ++it)
        if (it->first == id_) {
            r.paths.erase(it);
            break;
        }
}

void TempRegistration::commit(const std::function<void()>& publish) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    publish();
    for (auto it = r.paths.begin(); it != r.paths.end(); ++it)
        if (it->first == id_) {
            r.paths.erase(it);
            break;
        }
    id_ = -1;
}

namespace {
std::string temp_name(const std::string& path) {
    remove_stale_temps(path);
    return path + ".tmp." + std::to_string(::getpid());
}
}  // namespace

TempFile::TempFile(std::string path) : path_(std::move(path)), tmp_(temp_name(path_)), reg_(tmp_) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path_, ": cannot create ", tmp_, ": ", std::strerror(errno));
}

TempFile::~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
}

void TempFile::write_all(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
        const ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
        if (w < 0) {
            if (errno == EINTR) continue;
            fail(path_, ": write failed: ", std::strerror(errno));
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
}

void TempFile::pwrite_all(const void* data, size_t n, uint64_t offset) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
        const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
        if (w < 0) {
            if (errno == EINTR) continue;
            fail(path_, ": write failed: ", std::strerror(errno));
        }
        p += w;
        offset += static_cast<uint64_t>(w);
        n -= static_cast<size_t>(w);
    }
}

ScratchFile::ScratchFile(uint64_t bytes, std::string what)
    : f_(std::tmpfile()), bytes_(bytes), what_(std::move(what)) {
    if (!f_) fail(what_, ": cannot create a temporary file: ", std::strerror(errno));
    fd_ = ::fileno(f_);
    if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
        const int e = errno;
        std::fclose(f_);
        fail(what_, ": temporary file of ", bytes, " bytes: ", std::strerror(e));
    }
}

ScratchFile::~ScratchFile() { std::fclose(f_); }

void ScratchFile::read(void* data, size_t n, uint64_t offset) const {
    if (offset + n > bytes_) fail(what_, ": read past the end of the temporary file");
    auto* p = static_cast<uint8_t*>(data);
    while (n > 0) {
        const ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            fail(what_, ": temporary file: ", r == 0 ? "unexpected end" : std::strerror(errno));
        p += r, n -= static_cast<size_t>(r), offset += static_cast<uint64_t>(r);
    }
}

void ScratchFile::write(const void* data, size_t n, uint64_t offset) {
    if (offset + n > bytes_) fail(what_, ": write past the end of the temporary file");
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
        const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail(what_, ": temporary file: ", w == 0 ? "no space" : std::strerror(errno));
        p += w, n -= static_cast<size_t>(w), offset += static_cast<uint64_t>(w);
    }
}

void TempFile::commit() {
    if (committed_) return;
    if (::fsync(fd_) != 0) fail(path_, ": fsync failed: ", std::strerror(errno));
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail(path_, ": close failed: ", std::strerror(errno));
    reg_.commit([&] {
        if (::rename(tmp_.c_str(), path_.c_str()) != 0)
            fail(path_, ": cannot rename ", tmp_, ": ", std::strerror(errno));
    });
    committed_ = true;
}

int remove_stale_temps(const std::string& final_path) {
    fs::path p(final_path);
    while (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
    const std::string name = p.filename().string();
    if (name.empty() || name == "." || name == "..") return 0;
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    std::error_code ec;
    const bool final_exists = fs::exists(p, ec);
    int removed = 0;
    fs::directory_iterator it(dir, ec), end;
    std::vector<std::pair<fs::path, long>> stale;
    for (; !ec && it != end; it.increment(ec)) {
        const std::string entry = it->path().filename().string();
        if (entry.size() <= name.size() || entry.compare(0, name.size(), name) != 0) continue;
        const std::string rest = entry.substr(name.size());
        std::string pid_text;
        if (rest.rfind(".tmp.", 0) == 0)
            pid_text = rest.substr(5);
        else if (final_exists && rest.rfind(".old.", 0) == 0)
            pid_text = rest.substr(5);  // without the output, .old is the only copy: keep it
        if (!all_digits(pid_text)) continue;
        const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
        if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
        if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // owner alive
        stale.emplace_back(it->path(), pid);
    }
    for (const auto& [path, pid] : stale) {
        if (!remove_path(path.string())) continue;
        ++removed;
        log_info("lancet: removed ", path.string(), ", left by an interrupted run (process ", pid,
                 " is gone)");
    }
    return removed;
}

}  // namespace lancet
