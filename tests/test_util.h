// Helpers shared by the tests: temporary folders, the tiny synthetic checkpoint, running the
// `lancet` binary, environment variables for a scope, the HTTP server on a loopback port, the
// shared/ data path.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "io/awq_meta.h"

namespace lancet::server {
class ChatEngine;
class HttpServer;
struct ServerOptions;
}  // namespace lancet::server

namespace lancet::test {

// A fresh folder under the system temp dir, removed with everything in it on destruction.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  private:
    std::filesystem::path path_;
};

// The tiny synthetic checkpoint (`lancet synth --preset tiny`, by default f32 and seed 1) written
// to dir/name; returns its folder.
std::string synth_tiny(const TempDir& dir, const std::string& name = "tiny", uint64_t seed = 1,
                       DType dtype = DType::F32);

// The built `lancet` binary, or $LANCET_BIN when set (a copied build run elsewhere, e.g. on
// another machine).
std::string lancet_bin();

// Sets environment variables for a scope (the child processes inherit them); unsets them after.
class ScopedEnv {
  public:
    ScopedEnv(std::initializer_list<std::pair<const char*, std::string>> vars);
    ~ScopedEnv();
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

  private:
    std::vector<const char*> names_;
};

// The real HTTP server (server/http_server.h) bound to a free loopback port and listening on a
// thread of its own until destruction (stop, then join).
class LoopbackServer {
  public:
    LoopbackServer(server::ChatEngine& engine, const server::ServerOptions& opt);
    ~LoopbackServer();
    LoopbackServer(const LoopbackServer&) = delete;
    LoopbackServer& operator=(const LoopbackServer&) = delete;
    int port() const { return port_; }

  private:
    std::unique_ptr<server::HttpServer> http_;
    int port_ = 0;
    std::thread thread_;
};

struct RunResult {
    int exit_code = -1;    // -1 when the process died on a signal
    int signal = 0;        // the signal that killed it, or 0
    std::string out, err;  // captured stdout and stderr
};

// Runs the built `lancet` (or $LANCET_BIN) with the given argument string (shell-quoted by the
// caller), with a 120 s timeout so a hang fails the test instead of stalling the suite.
RunResult run_lancet(const std::string& args);

// ../shared relative to the source tree (or $LANCET_SHARED_DIR), or an empty path when it is
// absent (tests then skip).
std::filesystem::path shared_dir();

// An AWQ INT4 folder made from an original one by `lancet quantize --method rtn` (the seed's
// min-max quantizer; other tensors as BF16), with group size `gs`. Returns the folder.
std::string make_rtn_int4(const std::string& src, const std::filesystem::path& dst, int gs);

// An INT5 (format spec §1.2: awq_state_dict.safetensors + awq_meta.json with n_bit 5) or NVFP4
// (§1.3: nvfp4_state_dict.safetensors + nvfp4_meta.json) folder made from an original one the way
// the seed's writers lay it out: every decoder-layer linear quantized by the spec's min-max
// quantizer (quant::quantize_int5_rtn with group size `gs`, or quant::quantize_nvfp4), every
// other float tensor as BF16, integer tensors as they are, configs and tokenizer files copied.
// `f` must be Int5 or Nvfp4. Returns the folder.
std::string make_rtn_int5_or_nvfp4(const std::string& src, const std::filesystem::path& dst,
                                   QuantFormat f, int gs = 64);

// The message of the lancet::Error `f` throws; fails the test if it throws nothing.
std::string error_of(const std::function<void()>& f);

// A copy of the model folder `src` at `dst` without the ViT: the configs and tokenizer files, and
// model.safetensors without its vit_model.* tensors. Returns the folder.
std::string copy_without_vit(const std::string& src, const std::filesystem::path& dst);

// Writes bytes to a file, replacing it.
void write_file(const std::filesystem::path& p, const std::string& bytes);
std::string read_file(const std::filesystem::path& p);

}  // namespace lancet::test
