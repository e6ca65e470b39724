// Implementation of the shared test helpers.
#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "pipeline/quantize.h"

namespace lancet::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("lancet-test-" + std::to_string(getpid()) + "-" +
                                         std::to_string(counter++) + "-" + std::to_string(rd()));
    fs::create_directories(path_);
}

TempDir::~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
}

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream os;
    os << in.rdbuf();
    return os.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + p.string());
}

RunResult run_lancet(const std::string& args) {
    TempDir tmp;
    const fs::path out = tmp / "stdout", err = tmp / "stderr";
    // $LANCET_BIN overrides the built path (a copied build run elsewhere, e.g. on another machine).
    const char* env_bin = std::getenv("LANCET_BIN");
    const std::string bin = env_bin && *env_bin ? env_bin : LANCET_BIN;
    const std::string cmd =
        "timeout -s KILL 120 " + bin + " " + args + " >" + out.string() + " 2>" + err.string();
    const int status = std::system(cmd.c_str());
    RunResult r;
    if (WIFEXITED(status)) {
        r.exit_code = WEXITSTATUS(status);
        // The shell reports a child killed by a signal as 128 + signal.
        if (r.exit_code > 128) {
            r.signal = r.exit_code - 128;
            r.exit_code = -1;
        }
    } else if (WIFSIGNALED(status)) {
        r.signal = WTERMSIG(status);
    }
    r.out = read_file(out);
    r.err = read_file(err);
    return r;
}

std::string make_rtn_int4(const std::string& src, const fs::path& dst, int gs) {
    QuantizeOptions o;
    o.method = "rtn";
    o.group_size = gs;
    o.src = src;
    o.out = dst.string();
    o.progress = false;
    quantize_checkpoint(o);
    return o.out;
}

fs::path shared_dir() {
    const char* env = std::getenv("LANCET_SHARED_DIR");
    const fs::path p = env && *env ? env : LANCET_SHARED_DIR;
    std::error_code ec;
    if (fs::is_directory(p, ec)) return fs::weakly_canonical(p);
    return {};
}

}  // namespace lancet::test
