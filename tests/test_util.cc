// Implementation of the shared test helpers.
#include "test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/error.h"
#include "core/numeric.h"
#include "io/safetensors.h"
#include "model/lance_checkpoint.h"
#include "model/synth.h"
#include "pipeline/quantize.h"
#include "quant/q4.h"
#include "server/http_server.h"

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

std::string synth_tiny(const TempDir& dir, const std::string& name, uint64_t seed, DType dtype) {
    SynthOptions o;
    o.preset = "tiny";
    o.seed = seed;
    o.dtype = dtype;
    o.out = (dir / name).string();
    synth_checkpoint(o);
    return o.out;
}

std::string lancet_bin() {
    const char* env_bin = std::getenv("LANCET_BIN");
    return env_bin && *env_bin ? env_bin : LANCET_BIN;
}

ScopedEnv::ScopedEnv(std::initializer_list<std::pair<const char*, std::string>> vars) {
    for (const auto& [k, v] : vars) {
        names_.push_back(k);
        setenv(k, v.c_str(), 1);
    }
}

ScopedEnv::~ScopedEnv() {
    for (const char* k : names_) unsetenv(k);
}

LoopbackServer::LoopbackServer(server::ChatEngine& engine, const server::ServerOptions& opt)
    : http_(std::make_unique<server::HttpServer>(engine, opt)),
      port_(http_->bind()),
      thread_([this] { http_->listen(); }) {}

LoopbackServer::~LoopbackServer() {
    http_->stop();
    thread_.join();
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected a lancet::Error";
    return "";
}

std::string copy_without_vit(const std::string& src, const fs::path& dst) {
    fs::create_directories(dst);
    for (const char* f : {"llm_config.json", "vocab.json", "merges.txt", "tokenizer_config.json"})
        fs::copy_file(fs::path(src) / f, dst / f);
    auto ck = Checkpoint::open(src + "/model.safetensors");
    SafetensorsWriter w((dst / "model.safetensors").string());
    std::vector<std::string> keep;
    for (const std::string& n : ck->names())
        if (n.rfind("vit_model.", 0) != 0) keep.push_back(n);
    for (const std::string& n : keep) w.add(n, ck->view(n).dtype, ck->view(n).shape);
    w.begin();
    for (const std::string& n : keep) w.write(n, ck->view(n).data, ck->view(n).nbytes);
    w.finish();
    return dst.string();
}

RunResult run_lancet(const std::string& args) {
    TempDir tmp;
    const fs::path out = tmp / "stdout", err = tmp / "stderr";
    const std::string cmd = "timeout -s KILL 120 " + lancet_bin() + " " + args + " >" +
                            out.string() + " 2>" + err.string();
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

std::string make_rtn_int5_or_nvfp4(const std::string& src, const fs::path& dst, QuantFormat f,
                                   int gs) {
    if (f != QuantFormat::Int5 && f != QuantFormat::Nvfp4)
        fail("make_rtn_int5_or_nvfp4: format must be int5 or nvfp4");
    const bool nv = f == QuantFormat::Nvfp4;
    const auto ck = LanceCheckpoint::open(src);
    if (ck->kind() != CheckpointKind::Original) fail(src, ": not an original checkpoint");
    std::set<std::string> targets;  // the decoder-layer linears, as the seed's writers pick them
    for_each_lance_tensor(ck->config(), ck->vit_layout(), [&](const TensorSpec& s) {
        if (s.kind == TensorKind::LinearWeight && s.layer >= 0 &&
            (s.component == Component::LlmUnd || s.component == Component::LlmGen))
            targets.insert(s.name);
    });
    AwqMeta meta;
    meta.format = f;
    meta.n_bit = nv ? 4 : 5;
    meta.group_size = nv ? 16 : gs;
    meta.scheme = nv ? "nvfp4_e2m1_block_fp8scale" : "asym_int5_grouped_awq_uint8_storage";
    meta.extra = {{"awq_linears", 0}, {"plain_linears", targets.size()}};
    if (nv) meta.extra["fp4_lut_pos"] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};

    struct Out {
        std::string name;
        DType dtype;
        Shape shape;
        std::vector<uint8_t> bytes;
    };
    auto bytes_of = [](const auto& v) {
        const auto* p = reinterpret_cast<const uint8_t*>(v.data());
        return std::vector<uint8_t>(p, p + v.size() * sizeof(v[0]));
    };
    std::vector<Out> outs;
    for (const std::string& name : ck->main().names()) {
        const TensorView t = ck->main().view(name);
        if (targets.count(name)) {
            const std::string base = name.substr(0, name.size() - std::string(".weight").size());
            const int64_t out = t.shape.at(0), in = t.shape.at(1);
            const std::vector<float> w = to_f32(t);
            if (nv) {
                std::vector<uint8_t> fp8;
                const quant::Nvfp4Matrix q = quant::quantize_nvfp4(w.data(), out, in, &fp8);
                outs.push_back({base + ".qweight", DType::U8, {out, in / 2}, q.qweight});
                outs.push_back({base + ".scales_fp8", DType::U8, {out, in / 16}, fp8});
                outs.push_back(
                    {base + ".scales_bf16", DType::BF16, {out, in / 16}, bytes_of(q.scales_bf16)});
                meta.per_weight[name] = {t.shape, 16, "nvfp4_minmax"};
            } else {
                const quant::Int5Matrix q = quant::quantize_int5_rtn(w.data(), out, in, gs);
                const int64_t ng = in / q.group_size;
                outs.push_back({base + ".qweight", DType::U8, {out, in}, q.qweight});
                outs.push_back({base + ".scales", DType::BF16, {out, ng}, bytes_of(q.scales)});
                outs.push_back({base + ".zeros", DType::U8, {out, ng}, q.zeros});
                meta.per_weight[name] = {t.shape, q.group_size, "asym_int5_grouped_minmax"};
            }
        } else if (dtype_is_float(t.dtype)) {
            const std::vector<float> v = to_f32(t);
            std::vector<uint16_t> h(v.size());
            for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
            outs.push_back({name, DType::BF16, t.shape, bytes_of(h)});
        } else {
            outs.push_back(
                {name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
        }
    }
    fs::create_directories(dst);
    const std::string stem = nv ? "nvfp4" : "awq";
    {
        SafetensorsWriter w((dst / (stem + "_state_dict.safetensors")).string());
        for (const Out& o : outs) w.add(o.name, o.dtype, o.shape);
        for (const Out& o : outs) w.write(o.name, o.bytes.data(), o.bytes.size());
        w.finish();
    }
    write_file(dst / (stem + "_meta.json"), meta.to_json().dump(2) + "\n");
    for (const auto& e : fs::directory_iterator(src)) {
        const std::string n = e.path().filename().string();
        if (e.is_regular_file() && !n.ends_with(".safetensors") && !n.ends_with(".index.json"))
            fs::copy_file(e.path(), dst / n, fs::copy_options::overwrite_existing);
    }
    return dst.string();
}

fs::path shared_dir() {
    const char* env = std::getenv("LANCET_SHARED_DIR");
    const fs::path p = env && *env ? env : LANCET_SHARED_DIR;
    std::error_code ec;
    if (fs::is_directory(p, ec)) return fs::weakly_canonical(p);
    return {};
}

}  // namespace lancet::test
