// Implementation of OutputDir.
#include "io/output_dir.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <vector>

#include "core/error.h"

namespace lancet {

namespace fs = std::filesystem;

namespace {

std::mutex g_sources_mutex;
std::vector<std::string>& sources() {
    static std::vector<std::string> s;
    return s;
}

}  // namespace

SourceGuard::SourceGuard(std::string dir) : dir_(std::move(dir)) {
    std::lock_guard<std::mutex> lock(g_sources_mutex);
    sources().push_back(dir_);
}

SourceGuard::~SourceGuard() {
    std::lock_guard<std::mutex> lock(g_sources_mutex);
    auto& s = sources();
    const auto it = std::find(s.begin(), s.end(), dir_);
    if (it != s.end()) s.erase(it);
}

void check_not_source(const std::string& out) {
    std::lock_guard<std::mutex> lock(g_sources_mutex);
    for (const std::string& src : sources())
        if (path_overlaps(out, src))
            fail(out, ": overlaps the source checkpoint ", src,
                 " (the source is never written; choose an output outside it)");
}

OutputDir::OutputDir(std::string final_path, bool force)
    : final_(std::move(final_path)), force_(force) {
    while (final_.size() > 1 && final_.back() == '/') final_.pop_back();
    check_not_source(final_);
    remove_stale_temps(final_);
    std::error_code ec;
    if (fs::exists(final_, ec) && !force_)
        fail(final_, ": already exists (use --force to replace it)");
    if (fs::exists(final_, ec) && !fs::is_directory(final_, ec))
        fail(final_, ": exists and is not a folder");
    tmp_ = final_ + ".tmp." + std::to_string(::getpid());
    reg_ = std::make_unique<TempRegistration>(tmp_);
    fs::remove_all(tmp_, ec);
    if (!fs::create_directories(tmp_, ec) || ec)
        fail(final_, ": cannot create ", tmp_, ": ", ec.message());
}

OutputDir::~OutputDir() {
    if (!committed_) {
        std::error_code ec;
        fs::remove_all(tmp_, ec);
    }
}

std::string OutputDir::file(const std::string& name) const {
    return (fs::path(tmp_) / name).string();
}

void OutputDir::commit() {
    std::error_code ec;
    std::string old;
    std::unique_ptr<TempRegistration> old_reg;  // the replaced output, garbage once swapped
    if (fs::exists(final_, ec)) {
        old = final_ + ".old." + std::to_string(::getpid());
        old_reg = std::make_unique<TempRegistration>(old);
    }
    // Both renames under the registry's lock: an interruption sees the old output in place and
    // the temporary (removed), or the new output in place and the old one aside (removed).
    reg_->commit([&] {
        if (!old.empty()) {
            fs::rename(final_, old, ec);
            if (ec) fail(final_, ": cannot move the old folder aside: ", ec.message());
        }
        fs::rename(tmp_, final_, ec);
        if (ec) {
            if (!old.empty()) fs::rename(old, final_, ec);
            fail(final_, ": cannot rename ", tmp_, " into place");
        }
    });
    committed_ = true;
    if (!old.empty()) fs::remove_all(old, ec);
}

bool path_overlaps(const std::string& a, const std::string& b) {
    std::error_code ec;
    if (a.empty() || b.empty()) return false;
    if (fs::exists(a, ec) && fs::exists(b, ec) && fs::equivalent(a, b, ec)) return true;
    // weakly_canonical resolves the existing prefix (symlinks, ..), so a folder that does not
    // exist yet (the output) is still recognised inside or around the other.
    auto norm = [&](const std::string& p) {
        fs::path c = fs::weakly_canonical(fs::absolute(p, ec), ec).lexically_normal();
        if (!c.has_filename() && c.has_parent_path() && c != c.root_path()) c = c.parent_path();
        return c;
    };
    const fs::path ca = norm(a), cb = norm(b);
    auto inside = [](const fs::path& inner, const fs::path& outer) {
        auto o = outer.begin(), i = inner.begin();
        for (; o != outer.end(); ++o, ++i)
            if (i == inner.end() || *i != *o) return false;
        return true;
    };
    return inside(cb, ca) || inside(ca, cb);
}

}  // namespace lancet
