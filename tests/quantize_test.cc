// Tests of the statistics file, `lancet stats merge|synth` and `lancet quantize`: the written
// folder against the format spec (§1.1), the wiring against the layer math, function preservation
// on the written files, the report, and every bad input.
#include "pipeline/quantize.h"

#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/lance_checkpoint.h"
#include "model/lance_tensors.h"
#include "model/synth.h"
#include "pipeline/stats_synth.h"
#include "quant/awq_layer.h"
#include "quant/q4.h"
#include "quant/stats_file.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using quant::LinearStats;
using quant::QuantizedMatrix;
using test::run_lancet;
using test::TempDir;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

json read_json(const fs::path& p) { return json::parse(test::read_file(p)); }

std::vector<float> f32(const TensorView& v) { return to_f32(v); }

std::vector<uint16_t> u16(const TensorView& v) {
    std::vector<uint16_t> r(v.nbytes / 2);
    std::memcpy(r.data(), v.data, v.nbytes);
    return r;
}

std::vector<uint8_t> u8(const TensorView& v) {
    return std::vector<uint8_t>(v.data, v.data + v.nbytes);
}

QuantizedMatrix read_quantized(const LanceCheckpoint& ck, const std::string& base) {
    const QuantizedLinearView v = ck.quantized(base);
    QuantizedMatrix m;
    m.out = v.out;
    m.in = v.in;
    m.group_size = v.group_size;
    m.qweight = u8(v.qweight);
    m.scales = u16(v.scales);
    m.zeros = u8(v.zeros);
    return m;
}

// Folder names left in `dir` (to catch temporary folders left behind).
std::set<std::string> entries(const fs::path& dir) {
    std::set<std::string> r;
    for (const auto& e : fs::directory_iterator(dir)) r.insert(e.path().filename().string());
    return r;
}

int count_lines(const std::string& s) {
    int n = 0;
    for (char c : s) n += c == '\n';
    return n;
}

// One tiny checkpoint, its synthetic statistics, and AWQ (clipping on and off) and RTN outputs,
// built once for the whole suite.
class QuantizeTiny : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir();
        SynthOptions so;
        so.preset = "tiny";
        so.out = src().string();
        synth_checkpoint(so);
        SynthStatsOptions ss;
        ss.model = src().string();
        ss.out = stats().string();
        synth_stats(ss);
        QuantizeOptions qo;
        qo.src = src().string();
        qo.stats = stats().string();
        qo.progress = false;
        qo.method = "awq-gptq";  // the default
        qo.out = awq_gptq().string();
        quantize_checkpoint(qo);
        qo.method = "awq";
        qo.out = awq().string();
        quantize_checkpoint(qo);
        qo.clip = false;
        qo.out = awq_noclip().string();
        quantize_checkpoint(qo);
        qo.clip = true;
        qo.method = "rtn";
        qo.out = rtn().string();
        quantize_checkpoint(qo);
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    static fs::path src() { return *dir_ / "src"; }
    static fs::path stats() { return *dir_ / "stats.safetensors"; }
    static fs::path awq() { return *dir_ / "awq"; }
    static fs::path awq_noclip() { return *dir_ / "awq_noclip"; }
    static fs::path rtn() { return *dir_ / "rtn"; }
    static fs::path awq_gptq() { return *dir_ / "awq_gptq"; }
    static TempDir* dir_;
};
TempDir* QuantizeTiny::dir_ = nullptr;

// The exact on-disk layout of spec §1.1: every tensor of the source, quantized linears replaced by
// qweight U8 [out, in/2], scales BF16 and zeros U8 [out, in/gs], everything else BF16.
void check_layout(const fs::path& out, const fs::path& src, bool awq_meta) {
    auto s = Checkpoint::open(src.string());
    auto o = Checkpoint::open((out / "awq_state_dict.safetensors").string());
    const json meta = read_json(out / "awq_meta.json");
    std::set<std::string> want;
    int n_linears = 0;
    for (const std::string& name : s->names()) {
        const TensorEntry& e = s->entry(name);
        const bool quantized = meta["per_weight"].contains(name);
        if (!quantized) {
            want.insert(name);
            ASSERT_TRUE(o->has(name)) << name;
            EXPECT_EQ(o->entry(name).dtype, DType::BF16) << name;
            EXPECT_EQ(o->entry(name).shape, e.shape) << name;
            continue;
        }
        ++n_linears;
        const std::string base = name.substr(0, name.size() - 7);
        const json& pw = meta["per_weight"][name];
        const int64_t out_f = e.shape[0], in = e.shape[1];
        const int gs = pw["group_size"].get<int>();
        EXPECT_EQ(pw["shape"], json({out_f, in}));
        EXPECT_EQ(pw["n_bit"], 4);
        EXPECT_EQ(in % gs, 0);
        EXPECT_FALSE(o->has(name)) << name << " must be removed";
        for (const auto& [suffix, dt, shape] :
             {std::tuple{".qweight", DType::U8, Shape{out_f, in / 2}},
              std::tuple{".scales", DType::BF16, Shape{out_f, in / gs}},
              std::tuple{".zeros", DType::U8, Shape{out_f, in / gs}}}) {
            want.insert(base + suffix);
            ASSERT_TRUE(o->has(base + suffix)) << base << suffix;
            EXPECT_EQ(o->entry(base + suffix).dtype, dt) << base << suffix;
            EXPECT_EQ(o->entry(base + suffix).shape, shape) << base << suffix;
        }
    }
    EXPECT_EQ(std::set<std::string>(o->names().begin(), o->names().end()), want);
    EXPECT_EQ(n_linears, static_cast<int>(meta["per_weight"].size()));
    EXPECT_EQ(meta["n_bit"], 4);
    EXPECT_EQ(meta["group_size"], 64);
    if (awq_meta) {
        EXPECT_EQ(meta["scheme"], "asym_int4_grouped_awq");
        EXPECT_EQ(meta["awq_linears"].get<int>() + meta["plain_linears"].get<int>(), n_linears);
        EXPECT_TRUE(meta["tasks_calibrated"].is_array());
        EXPECT_FALSE(meta.contains("calibration_samples"));
    } else {
        EXPECT_EQ(meta["scheme"], "asym_int4_grouped_minmax");
        EXPECT_EQ(meta["calibration_samples"], 0);
        EXPECT_FALSE(meta.contains("awq_linears"));
        EXPECT_FALSE(meta.contains("tasks_calibrated"));
    }
    for (const char* f : {"llm_config.json", "Qwen2.5-VL-ViT/config.json", "vocab.json",
                          "merges.txt", "tokenizer_config.json", "quant_report.json"})
        EXPECT_TRUE(fs::exists(out / f)) << f;
}

TEST_F(QuantizeTiny, AwqFolderFollowsTheSpecLayout) {
    check_layout(awq(), src() / "model.safetensors", true);
    auto ck = LanceCheckpoint::open(awq().string());
    EXPECT_EQ(ck->kind(), CheckpointKind::Awq);
    const json meta = read_json(awq() / "awq_meta.json");
    // All 14 linears per layer: the four norm groups plus o via v and down via up.
    EXPECT_EQ(meta["awq_linears"], 28);
    EXPECT_EQ(meta["plain_linears"], 0);
    EXPECT_EQ(meta["tasks_calibrated"], json({"synthetic"}));
    // per_weight in layer order: the four fusion groups, then the four pair-fused linears.
    std::vector<std::string> keys;
    for (auto it = meta["per_weight"].begin(); it != meta["per_weight"].end(); ++it)
        keys.push_back(it.key());
    // nlohmann::json sorts keys; read the order from the text instead.
    const std::string text = test::read_file(awq() / "awq_meta.json");
    std::vector<size_t> pos;
    for (int i = 0; i < 2; ++i) {
        const std::vector<std::string> l = lance_layer_linears(i);
        for (int k : {0, 1, 2, 7, 8, 9, 4, 5, 11, 12, 3, 10, 6, 13}) {
            const size_t p = text.find("\"" + l[k] + ".weight\"");
            ASSERT_NE(p, std::string::npos) << l[k];
            pos.push_back(p);
        }
    }
    EXPECT_TRUE(std::is_sorted(pos.begin(), pos.end()));
    EXPECT_EQ(keys.size(), pos.size());
    // inspect shows the quantized bits per weight of the decoder.
    const auto r = run_lancet("inspect " + q(awq()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("28 quantized linears"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("| llm.und | 57 | 74368 | 41.6 kB | 4.475 |"), std::string::npos) << r.out;
}

TEST_F(QuantizeTiny, RtnFolderIsTheSeedMinMaxFormatBitForBit) {
    check_layout(rtn(), src() / "model.safetensors", false);
    auto s = LanceCheckpoint::open(src().string());
    auto o = LanceCheckpoint::open(rtn().string());
    const json meta = read_json(rtn() / "awq_meta.json");
    for (auto it = meta["per_weight"].begin(); it != meta["per_weight"].end(); ++it) {
        EXPECT_EQ(it.value()["scheme"], "asym_int4_grouped_minmax");
        const std::string base = it.key().substr(0, it.key().size() - 7);
        const std::vector<float> w = f32(s->tensor(it.key()));
        const int out_f = it.value()["shape"][0], in = it.value()["shape"][1];
        quant::RtnOptions ro;  // the seed's quantizer: bf16 input, codes from the fp32 scale
        const QuantizedMatrix ref = quant::quantize_rtn(w.data(), out_f, in, ro);
        const QuantizedMatrix got = read_quantized(*o, base);
        EXPECT_EQ(got.qweight, ref.qweight) << base;
        EXPECT_EQ(got.scales, ref.scales) << base;
        EXPECT_EQ(got.zeros, ref.zeros) << base;
    }
    // Norms unchanged (bf16 of the source).
    const std::string n = "language_model.model.layers.1.input_layernorm_moe_gen.weight";
    const std::vector<float> g = f32(s->tensor(n));
    const std::vector<uint16_t> got = u16(o->tensor(n));
    for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(got[i], f32_to_bf16(g[i]));
}

// Every tensor that is neither a quantized linear nor edited by fusion (the fused norms and the
// v_proj bias) equals the source rounded to bf16.
TEST_F(QuantizeTiny, PassThroughTensorsAreTheSourceInBf16) {
    auto s = LanceCheckpoint::open(src().string());
    auto o = LanceCheckpoint::open(awq().string());
    int checked = 0;
    for (const TensorSpec& spec : o->expected()) {
        const std::string& n = spec.name;
        if (n.ends_with(".qweight") || n.ends_with(".scales") || n.ends_with(".zeros")) continue;
        if (n.find("input_layernorm") != std::string::npos ||
            n.find("post_attention_layernorm") != std::string::npos ||
            n.find("v_proj") != std::string::npos)
            continue;
        const std::vector<float> a = f32(s->tensor(n));
        const std::vector<uint16_t> b = u16(o->tensor(n));
        ASSERT_EQ(a.size(), b.size()) << n;
        for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(b[i], f32_to_bf16(a[i])) << n << " " << i;
        ++checked;
    }
    // embed, lm_head, the two final norms, bridge (8), pos table (13), ViT (1 + 12 x 4 blocks + 5
    // = 54), and per layer path the q/k biases and q/k norms (4 x 4).
    EXPECT_EQ(checked, 83);
}

// The wiring against the math: re-running quantize_layer on layer 1's gen path with the same
// statistics gives exactly the written codes, and the written norms are bf16(g / s), the v bias
// bf16(b / s_o).
TEST_F(QuantizeTiny, WrittenLayerMatchesQuantizeLayer) {
    auto s = LanceCheckpoint::open(src().string());
    auto o = LanceCheckpoint::open(awq().string());
    quant::StatsFile st(stats().string());
    const LanceConfig& c = s->config();
    const std::string p = "language_model.model.layers.1.", a = p + "self_attn.",
                      m = p + "mlp_moe_gen.", x = "_moe_gen";
    quant::LayerWeights w;
    w.hidden = c.hidden_size;
    w.intermediate = c.intermediate_size;
    w.num_heads = c.num_attention_heads;
    w.num_kv_heads = c.num_key_value_heads;
    w.head_dim = c.head_dim();
    w.input_norm = f32(s->tensor(p + "input_layernorm" + x + ".weight"));
    w.post_norm = f32(s->tensor(p + "post_attention_layernorm" + x + ".weight"));
    const std::vector<float> g_in = w.input_norm, g_post = w.post_norm;
    w.q = f32(s->tensor(a + "q_proj" + x + ".weight"));
    w.k = f32(s->tensor(a + "k_proj" + x + ".weight"));
    w.v = f32(s->tensor(a + "v_proj" + x + ".weight"));
    w.q_bias = f32(s->tensor(a + "q_proj" + x + ".bias"));
    w.k_bias = f32(s->tensor(a + "k_proj" + x + ".bias"));
    w.v_bias = f32(s->tensor(a + "v_proj" + x + ".bias"));
    const std::vector<float> v_bias0 = w.v_bias;
    w.o = f32(s->tensor(a + "o_proj" + x + ".weight"));
    w.gate = f32(s->tensor(m + "gate_proj.weight"));
    w.up = f32(s->tensor(m + "up_proj.weight"));
    w.down = f32(s->tensor(m + "down_proj.weight"));
    const LinearStats sq = st.load(a + "q_proj" + x), so = st.load(a + "o_proj" + x),
                      sg = st.load(m + "gate_proj"), sd = st.load(m + "down_proj");
    const quant::LayerResult r = quant::quantize_layer(w, {&sq, &so, &sg, &sd}, {});
    auto same = [&](const std::string& base, const QuantizedMatrix& want) {
        const QuantizedMatrix got = read_quantized(*o, base);
        EXPECT_EQ(got.qweight, want.qweight) << base;
        EXPECT_EQ(got.scales, want.scales) << base;
        EXPECT_EQ(got.zeros, want.zeros) << base;
    };
    same(a + "q_proj" + x, r.qkv.consumers[0].q);
    same(a + "k_proj" + x, r.qkv.consumers[1].q);
    same(a + "v_proj" + x, r.qkv.consumers[2].q);
    same(a + "o_proj" + x, r.o.consumers[0].q);
    same(m + "gate_proj", r.gate_up.consumers[0].q);
    same(m + "up_proj", r.gate_up.consumers[1].q);
    same(m + "down_proj", r.down.consumers[0].q);
    // The scales really moved something (the planted outliers), so the checks below have teeth.
    EXPECT_GT(r.qkv.alpha, 0.0f);
    const std::vector<uint16_t> n_in = u16(o->tensor(p + "input_layernorm" + x + ".weight"));
    const std::vector<uint16_t> n_post =
        u16(o->tensor(p + "post_attention_layernorm" + x + ".weight"));
    for (int i = 0; i < c.hidden_size; ++i) {
        EXPECT_EQ(n_in[i], f32_to_bf16(static_cast<float>(double(g_in[i]) / r.qkv.s[i]))) << i;
        EXPECT_EQ(n_post[i], f32_to_bf16(static_cast<float>(double(g_post[i]) / r.gate_up.s[i])))
            << i;
    }
    const std::vector<uint16_t> vb = u16(o->tensor(a + "v_proj" + x + ".bias"));
    for (int k = 0; k < c.kv_dim(); ++k)
        EXPECT_EQ(vb[k], f32_to_bf16(static_cast<float>(double(v_bias0[k]) / r.o.s_free[k])));
}

// Without clipping every code dequantizes to within one group step of the fused f32 weight
// W·diag(s): round-to-nearest is off by at most half a step, plus the bf16 rounding of the stored
// step (relative 2^-9, times at most 15 steps of range) — below one step in all.
TEST_F(QuantizeTiny, CodesDequantizeWithinOneStepOfTheFusedWeight) {
    auto s = LanceCheckpoint::open(src().string());
    auto o = LanceCheckpoint::open(awq_noclip().string());
    const json meta = read_json(awq_noclip() / "awq_meta.json");
    // Recover s per input channel from the fused norm: s = g / g_fused (bf16, relative 2^-8).
    const std::string p = "language_model.model.layers.0.";
    const std::vector<float> g = f32(s->tensor(p + "input_layernorm.weight"));
    const std::vector<float> gf = f32(o->tensor(p + "input_layernorm.weight"));
    // v_proj's rows are also divided by o_proj's scales; recover those from its bias.
    const std::vector<float> bv = f32(s->tensor(p + "self_attn.v_proj.bias"));
    const std::vector<float> bvf = f32(o->tensor(p + "self_attn.v_proj.bias"));
    for (const char* lin : {"q_proj", "k_proj", "v_proj"}) {
        const std::string base = p + "self_attn." + lin;
        const bool v = std::string(lin) == "v_proj";
        const std::vector<float> w = f32(s->tensor(base + ".weight"));
        const QuantizedMatrix qm = read_quantized(*o, base);
        const std::vector<float> deq = quant::dequantize(qm);
        const int in = qm.in, gs = qm.group_size;
        int64_t n_bad = 0;
        for (int r = 0; r < qm.out; ++r)
            for (int i = 0; i < in; ++i) {
                const double si = double(g[i]) / gf[i] * (v ? double(bvf[r]) / bv[r] : 1.0);
                const double step = bf16_to_f32(qm.scales[r * (in / gs) + i / gs]);
                // Each scale recovered through a bf16 value is off by up to 2^-8 relative.
                const double tol = step + std::fabs(w[r * in + i] * si) * 0x1p-6;
                n_bad += std::fabs(deq[r * in + i] - w[r * in + i] * si) > tol;
            }
        EXPECT_EQ(n_bad, 0) << base;
    }
}

// Layer outputs computed from the written files (fused norm, dequantized codes, rescaled v bias)
// against the f32 source, on fresh rows x = z ⊙ g: q, k, o (identity attention, each query head
// reading its kv head's v) and the MLP. Without fusion the outputs would be off by the scales
// themselves (s spans over 10x here), so a small error proves the norms, v and up were rescaled
// consistently; it is compared with the seed-RTN folder on the same rows.
struct LayerOut {
    std::vector<double> q, k, o, d;
};
LayerOut forward(const LanceCheckpoint& ck, int layer, const std::vector<float>& z,
                 const std::vector<float>& z2, int n) {
    const LanceConfig& c = ck.config();
    const int h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate_size;
    const int hd = c.head_dim(), per_kv = c.num_attention_heads / c.num_key_value_heads;
    const std::string p = "language_model.model.layers." + std::to_string(layer) + ".";
    auto weight = [&](const std::string& base) {
        return ck.is_quantized(base) ? quant::dequantize(read_quantized(ck, base))
                                     : f32(ck.tensor(base + ".weight"));
    };
    auto lin = [](const std::vector<double>& x, int n, int in, const std::vector<float>& w, int out,
                  const std::vector<float>* b) {
        std::vector<double> y(static_cast<size_t>(n) * out);
        for (int t = 0; t < n; ++t)
            for (int o = 0; o < out; ++o) {
                double acc = b ? (*b)[o] : 0.0;
                for (int i = 0; i < in; ++i) acc += x[t * in + i] * w[size_t(o) * in + i];
                y[t * out + o] = acc;
            }
        return y;
    };
    const std::vector<float> g = f32(ck.tensor(p + "input_layernorm.weight"));
    const std::vector<float> g2 = f32(ck.tensor(p + "post_attention_layernorm.weight"));
    std::vector<double> x(static_cast<size_t>(n) * h), x2(x.size());
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < h; ++i) {
            x[t * h + i] = double(z[t * h + i]) * g[i];
            x2[t * h + i] = double(z2[t * h + i]) * g2[i];
        }
    const std::string a = p + "self_attn.", m = p + "mlp.";
    const std::vector<float> bq = f32(ck.tensor(a + "q_proj.bias")),
                             bk = f32(ck.tensor(a + "k_proj.bias")),
                             bv = f32(ck.tensor(a + "v_proj.bias"));
    LayerOut r;
    r.q = lin(x, n, h, weight(a + "q_proj"), qd, &bq);
    r.k = lin(x, n, h, weight(a + "k_proj"), kvd, &bk);
    const std::vector<double> v = lin(x, n, h, weight(a + "v_proj"), kvd, &bv);
    std::vector<double> att(static_cast<size_t>(n) * qd);
    for (int t = 0; t < n; ++t)
        for (int hq = 0; hq < c.num_attention_heads; ++hq)
            for (int d = 0; d < hd; ++d)
                att[t * qd + hq * hd + d] = v[t * kvd + (hq / per_kv) * hd + d];
    r.o = lin(att, n, qd, weight(a + "o_proj"), h, nullptr);
    std::vector<double> gate = lin(x2, n, h, weight(m + "gate_proj"), I, nullptr);
    const std::vector<double> up = lin(x2, n, h, weight(m + "up_proj"), I, nullptr);
    for (size_t k = 0; k < gate.size(); ++k) gate[k] = gate[k] / (1 + std::exp(-gate[k])) * up[k];
    r.d = lin(gate, n, I, weight(m + "down_proj"), h, nullptr);
    return r;
}

double rel_err(const std::vector<double>& a, const std::vector<double>& ref) {
    double e = 0, y = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        e += (a[i] - ref[i]) * (a[i] - ref[i]);
        y += ref[i] * ref[i];
    }
    return std::sqrt(e / y);
}

TEST_F(QuantizeTiny, WrittenCheckpointPreservesTheLayerFunction) {
    auto s = LanceCheckpoint::open(src().string());
    auto a = LanceCheckpoint::open(awq().string());
    auto r = LanceCheckpoint::open(rtn().string());
    const int n = 64, h = s->config().hidden_size;
    Rng rng(99);
    std::vector<float> z(size_t(n) * h), z2(z.size());
    for (auto& v : z) v = static_cast<float>(rng.normal());
    for (auto& v : z2) v = static_cast<float>(rng.normal());
    for (int layer = 0; layer < 2; ++layer) {
        const LayerOut ref = forward(*s, layer, z, z2, n);
        const LayerOut fa = forward(*a, layer, z, z2, n);
        const LayerOut fr = forward(*r, layer, z, z2, n);
        // 4-bit codes with g64 give a few percent of relative output error on plain rows; the
        // planted outliers (20-100x) are what make RTN far worse. AWQ must stay at the few-
        // percent level and clearly below RTN on every output. The bound is 0.2, not 0.15:
        // layer 0's down_proj lands at 0.112 or at 0.185-0.194 depending on which uniform
        // half of the 1024 synthetic rows the reservoir keeps (measured over reservoir seeds,
        // with the old algorithm-R reservoir and the keyed one alike: the scale search has two
        // near-equal minima on the search rows); RTN is at 0.83 there.
        const std::pair<const std::vector<double>*, const char*> outs[] = {
            {&ref.q, "q"}, {&ref.k, "k"}, {&ref.o, "o"}, {&ref.d, "down"}};
        const std::vector<double>* got_a[] = {&fa.q, &fa.k, &fa.o, &fa.d};
        const std::vector<double>* got_r[] = {&fr.q, &fr.k, &fr.o, &fr.d};
        for (int k = 0; k < 4; ++k) {
            const double ea = rel_err(*got_a[k], *outs[k].first);
            const double er = rel_err(*got_r[k], *outs[k].first);
            EXPECT_LT(ea, 0.2) << "layer " << layer << " " << outs[k].second;
            EXPECT_LT(ea, er) << "layer " << layer << " " << outs[k].second;
        }
        EXPECT_LT(rel_err(fa.q, ref.q), 0.6 * rel_err(fr.q, ref.q));
    }
}

TEST_F(QuantizeTiny, AwqGptqStaysInThePublishedFormatAndBeatsAwq) {
    check_layout(awq_gptq(), src() / "model.safetensors", true);
    auto ck = LanceCheckpoint::open(awq_gptq().string());
    EXPECT_EQ(ck->kind(), CheckpointKind::Awq);
    const auto r = run_lancet("inspect " + q(awq_gptq()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("28 quantized linears"), std::string::npos) << r.out;
    // The written layers against the source on plain Gaussian rows (not the calibration rows).
    auto s = LanceCheckpoint::open(src().string());
    auto rt = LanceCheckpoint::open(rtn().string());
    const int n = 64, h = s->config().hidden_size;
    Rng rng(77);
    std::vector<float> z(size_t(n) * h), z2(z.size());
    for (auto& v : z) v = static_cast<float>(rng.normal());
    for (auto& v : z2) v = static_cast<float>(rng.normal());
    for (int layer = 0; layer < 2; ++layer) {
        const LayerOut ref = forward(*s, layer, z, z2, n);
        const LayerOut fg = forward(*ck, layer, z, z2, n);
        const LayerOut fr = forward(*rt, layer, z, z2, n);
        EXPECT_LT(rel_err(fg.q, ref.q), 0.6 * rel_err(fr.q, ref.q)) << "layer " << layer;
        EXPECT_LT(rel_err(fg.d, ref.d), rel_err(fr.d, ref.d)) << "layer " << layer;
    }
    // The report compares all four methods per linear and per type; the stored result is the
    // AWQ+GPTQ one and on held-out rows it beats AWQ alone.
    const json rep = read_json(awq_gptq() / "quant_report.json");
    EXPECT_EQ(rep["method"], "awq-gptq");
    for (auto it = rep["linears"].begin(); it != rep["linears"].end(); ++it) {
        const json& e = it.value();
        EXPECT_EQ(e["chosen"], "awq-gptq") << it.key();
        for (const char* k : {"rtn_error", "awq_error", "gptq_error", "awq_gptq_error"})
            EXPECT_TRUE(e[k]["heldout"].is_number()) << it.key() << " " << k;
        EXPECT_EQ(e["result_error"], e["awq_gptq_error"]) << it.key();
    }
    const json& t = rep["totals"];
    std::printf(
        "tiny held-out: RTN %.4f AWQ %.4f GPTQ %.4f AWQ+GPTQ %.4f\n",
        t["mean_rtn_error_heldout"].get<double>(), t["mean_awq_error_heldout"].get<double>(),
        t["mean_gptq_error_heldout"].get<double>(), t["mean_awq_gptq_error_heldout"].get<double>());
    EXPECT_LT(t["mean_result_error_heldout"].get<double>(),
              t["mean_awq_error_heldout"].get<double>());
    const auto table = report_table(rep);
    EXPECT_NE(table.find("AWQ+GPTQ"), std::string::npos) << table;
}

TEST_F(QuantizeTiny, ReportShowsAwqWellBelowRtn) {
    const json rep = read_json(awq() / "quant_report.json");
    const json& t = rep["totals"];
    EXPECT_EQ(t["n_linears"], 28);
    EXPECT_EQ(t["n_measured"], 28);
    EXPECT_LE(t["mean_awq_error_heldout"].get<double>(),
              0.6 * t["mean_rtn_error_heldout"].get<double>());
    for (auto it = rep["linears"].begin(); it != rep["linears"].end(); ++it) {
        const json& e = it.value();
        EXPECT_LE(e["group_error"]["awq"]["search"].get<double>(),
                  e["group_error"]["rtn"]["search"].get<double>())
            << it.key();
        EXPECT_GT(e["rows"]["heldout"].get<int>(), 0);
        EXPECT_GE(e["clip"]["fraction_clipped"].get<double>(), 0.0);
        EXPECT_EQ(e["scheme"], "asym_int4_grouped_awq");
    }
    for (const char* type :
         {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
        EXPECT_EQ(rep["by_type"][type]["n_linears"], 4) << type;
    const std::string table = report_table(rep);
    EXPECT_NE(table.find("overall"), std::string::npos);
    EXPECT_NE(table.find("down_proj"), std::string::npos);
}

// The seed's x2t-only calibration: the gen path has no statistics, so its groups get RTN with
// the norm left alone and o/down plain min-max.
TEST_F(QuantizeTiny, PathWithoutStatisticsGetsRtnAndKeepsItsNorms) {
    TempDir d;
    SynthStatsOptions ss;
    ss.model = src().string();
    ss.out = (d / "und.safetensors").string();
    ss.und_only = true;
    ss.tokens = 256;
    synth_stats(ss);
    const auto r = run_lancet("-q quantize --stats " + q(d / "und.safetensors") + " --src " +
                              q(src()) + " --out " + q(d / "out"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("have no statistics"), std::string::npos) << r.err;
    const json meta = read_json(d / "out" / "awq_meta.json");
    EXPECT_EQ(meta["awq_linears"], 14);
    EXPECT_EQ(meta["plain_linears"], 14);
    const std::string p = "language_model.model.layers.0.";
    EXPECT_EQ(meta["per_weight"][p + "self_attn.q_proj_moe_gen.weight"]["scheme"],
              "asym_int4_grouped_no_awq");
    EXPECT_EQ(meta["per_weight"][p + "mlp_moe_gen.down_proj.weight"]["scheme"],
              "asym_int4_grouped_minmax");
    EXPECT_EQ(meta["per_weight"][p + "self_attn.q_proj.weight"]["scheme"], "asym_int4_grouped_awq");
    auto s = LanceCheckpoint::open(src().string());
    auto o = LanceCheckpoint::open((d / "out").string());
    const std::string n = p + "post_attention_layernorm_moe_gen.weight";
    const std::vector<float> g = f32(s->tensor(n));
    const std::vector<uint16_t> got = u16(o->tensor(n));
    for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(got[i], f32_to_bf16(g[i]));
    // gen's q_proj is the seed RTN bit for bit.
    const std::string qb = p + "self_attn.q_proj_moe_gen";
    const std::vector<float> w = f32(s->tensor(qb + ".weight"));
    const QuantizedMatrix ref = quant::quantize_rtn(w.data(), 64, 64, quant::RtnOptions{});
    EXPECT_EQ(read_quantized(*o, qb).qweight, ref.qweight);
}

TEST_F(QuantizeTiny, GroupSizeFallbackIsWarnedAndRecorded) {
    TempDir d;
    const auto r = run_lancet("-q quantize --group-size 128 --stats " + q(stats()) + " --src " +
                              q(src()) + " --out " + q(d / "out") + " --include lm_head");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("warning: language_model.model.layers.0.self_attn.q_proj: in = 64 is "
                         "not divisible by 128; using group size 64"),
              std::string::npos)
        << r.err;
    const json meta = read_json(d / "out" / "awq_meta.json");
    EXPECT_EQ(meta["group_size"], 128);
    const std::string p = "language_model.model.layers.1.";
    EXPECT_EQ(meta["per_weight"][p + "self_attn.q_proj.weight"]["group_size"], 64);
    EXPECT_EQ(meta["per_weight"][p + "mlp.down_proj.weight"]["group_size"], 128);
    EXPECT_EQ(meta["per_weight"]["language_model.lm_head.weight"]["group_size"], 64);
    auto o = LanceCheckpoint::open((d / "out").string());
    EXPECT_TRUE(o->is_quantized("language_model.lm_head"));
    EXPECT_EQ(o->quantized(p + "self_attn.q_proj").group_size, 64);
}

TEST_F(QuantizeTiny, IncludeVitQuantizesTheVisionLinears) {
    TempDir d;
    const auto r = run_lancet("-q quantize --method rtn --src " + q(src()) + " --out " +
                              q(d / "out") + " --include vit");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto o = LanceCheckpoint::open((d / "out").string());
    EXPECT_TRUE(o->is_quantized("vit_model.blocks.1.attn.qkv"));
    EXPECT_TRUE(o->is_quantized("vit_model.merger.mlp.2"));
    EXPECT_FALSE(o->is_quantized("language_model.lm_head"));
}

// ---- bad input: one line, exit 1, nothing left behind ----

void expect_clean_failure(const test::RunResult& r, const std::string& what, const fs::path& dir,
                          const std::set<std::string>& before) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("lancet: error: "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_EQ(entries(dir), before) << r.err;
}

// Copies a statistics file, letting `edit` drop (return false) or change entries.
void rewrite_stats(const fs::path& from, const fs::path& to,
                   const std::function<bool(const std::string&, LinearStats&)>& edit) {
    quant::StatsFile in(from.string());
    std::vector<std::pair<std::string, LinearStats>> keep;
    for (const auto& [base, e] : in.entries()) {
        LinearStats s = in.load(base);
        if (edit(base, s)) keep.emplace_back(base, std::move(s));
    }
    quant::StatsFileWriter w(to.string(), in.tasks(), in.capacity());
    for (const auto& [b, s] : keep) w.declare(b, s.in, s.n_rows());
    for (const auto& [b, s] : keep) w.write(b, s);
    w.finish();
}

TEST_F(QuantizeTiny, StatsMissingALinearIsRefused) {
    TempDir d;
    const std::string k = "language_model.model.layers.1.self_attn.k_proj";
    rewrite_stats(stats(), d / "s.safetensors",
                  [&](const std::string& b, LinearStats&) { return b != k; });
    const auto before = entries(d.path());
    const auto r = run_lancet("-q quantize --stats " + q(d / "s.safetensors") + " --src " +
                              q(src()) + " --out " + q(d / "out"));
    expect_clean_failure(r, "no statistics for " + k, d.path(), before);
}

TEST_F(QuantizeTiny, StatsWithWrongChannelCountIsRefused) {
    TempDir d;
    const std::string v = "language_model.model.layers.0.mlp.down_proj";
    rewrite_stats(stats(), d / "s.safetensors", [&](const std::string& b, LinearStats& s) {
        if (b == v) {
            s.in = 96;
            s.mean_abs.assign(96, 1.0f);
            s.max_abs.assign(96, 2.0f);
            s.rows.assign(static_cast<size_t>(8) * 96, 1.0f);
        }
        return true;
    });
    const auto before = entries(d.path());
    const auto r = run_lancet("-q quantize --stats " + q(d / "s.safetensors") + " --src " +
                              q(src()) + " --out " + q(d / "out"));
    expect_clean_failure(r, v + " has statistics for 96 input channels", d.path(), before);
}

TEST_F(QuantizeTiny, AlreadyQuantizedSourceIsRefused) {
    TempDir d;
    const auto before = entries(d.path());
    const auto r = run_lancet("-q quantize --stats " + q(stats()) + " --src " + q(awq()) +
                              " --out " + q(d / "out"));
    expect_clean_failure(r, "is already quantized", d.path(), before);
}

TEST_F(QuantizeTiny, OutputOverTheSourceIsRefused) {
    const auto before = entries(src());
    const auto parent = entries(src().parent_path());
    for (const fs::path& out : {src(), src() / "inner", src().parent_path()}) {
        const auto r = run_lancet("-q quantize --force --stats " + q(stats()) + " --src " +
                                  q(src()) + " --out " + q(out));
        expect_clean_failure(r, "overlaps the source checkpoint", src(), before);
        EXPECT_EQ(entries(src().parent_path()), parent);
    }
}

TEST_F(QuantizeTiny, ExistingOutputNeedsForce) {
    TempDir d;
    fs::create_directory(d / "out");
    test::write_file(d / "out" / "keep.txt", "mine");
    const auto before = entries(d.path());
    const auto r =
        run_lancet("-q quantize --method rtn --src " + q(src()) + " --out " + q(d / "out"));
    expect_clean_failure(r, "already exists (use --force", d.path(), before);
    EXPECT_EQ(test::read_file(d / "out" / "keep.txt"), "mine");
    const auto f =
        run_lancet("-q quantize --method rtn --force --src " + q(src()) + " --out " + q(d / "out"));
    EXPECT_EQ(f.exit_code, 0) << f.err;
    EXPECT_FALSE(fs::exists(d / "out" / "keep.txt"));
    EXPECT_EQ(entries(d.path()), before);
}

TEST_F(QuantizeTiny, AwqWithoutStatsAndBadGroupSizeAreRefused) {
    TempDir d;
    const auto before = entries(d.path());
    expect_clean_failure(run_lancet("-q quantize --src " + q(src()) + " --out " + q(d / "out")),
                         "needs activation statistics", d.path(), before);
    expect_clean_failure(run_lancet("-q quantize --group-size 48 --stats " + q(stats()) +
                                    " --src " + q(src()) + " --out " + q(d / "out")),
                         "--group-size must be 32, 64 or 128", d.path(), before);
}

TEST_F(QuantizeTiny, FullDiskLeavesNothingBehind) {
    TempDir d;
    const fs::path mnt = d / "mnt";
    fs::create_directory(mnt);
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=256k") != 0)
        GTEST_SKIP() << "cannot mount a tmpfs here (not root?)";
    const auto r = run_lancet("-q quantize --stats " + q(stats()) + " --src " + q(src()) +
                              " --out " + q(mnt / "out"));
    const auto left = entries(mnt);
    ::umount(mnt.c_str());
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
    EXPECT_TRUE(left.empty()) << *left.begin();
}

// ---- statistics files ----

TEST_F(QuantizeTiny, SynthStatsFollowTheNormGains) {
    // q/k/v inputs are z ⊙ g: mean|x_i| = sqrt(2/pi) g_i. With 1024 tokens the estimate's relative
    // standard deviation is sqrt(1 - 2/pi) / sqrt(2/pi) / 32 = 0.024; 5 sigma = 0.12.
    quant::StatsFile st(stats().string());
    auto s = LanceCheckpoint::open(src().string());
    EXPECT_EQ(st.entries().size(), 28u);
    EXPECT_EQ(st.tasks(), std::vector<std::string>{"synthetic"});
    EXPECT_EQ(st.capacity(), 512);
    const LinearStats q0 = st.load("language_model.model.layers.0.self_attn.q_proj");
    const std::vector<float> g =
        f32(s->tensor("language_model.model.layers.0.input_layernorm.weight"));
    EXPECT_EQ(q0.n_tokens, 1024);
    EXPECT_EQ(q0.n_rows(), 512);
    for (int i = 0; i < q0.in; ++i) {
        EXPECT_NEAR(q0.mean_abs[i], std::sqrt(2 / M_PI) * g[i], 0.12 * std::sqrt(2 / M_PI) * g[i]);
        EXPECT_GE(q0.max_abs[i], q0.mean_abs[i]);
    }
    // down_proj's input is silu(gate) * up: no channel dominates by construction, but it is not
    // zero anywhere.
    const LinearStats d0 = st.load("language_model.model.layers.0.mlp_moe_gen.down_proj");
    EXPECT_EQ(d0.in, 128);
    for (float v : d0.mean_abs) EXPECT_GT(v, 0.0f);
}

TEST(StatsFile, MergeWeightsByTokenCounts) {
    TempDir d;
    SynthOptions so;
    so.preset = "tiny";
    so.out = (d / "m").string();
    synth_checkpoint(so);
    SynthStatsOptions ss;
    ss.model = (d / "m").string();
    ss.rows = 64;
    ss.tokens = 300;
    ss.seed = 5;
    ss.out = (d / "a.safetensors").string();
    synth_stats(ss);
    ss.tokens = 100;
    ss.seed = 6;
    ss.und_only = true;  // b covers only the und path: gen is carried over from a
    ss.out = (d / "b.safetensors").string();
    synth_stats(ss);
    const auto r = run_lancet("stats merge " + q(d / "a.safetensors") + " " +
                              q(d / "b.safetensors") + " -o " + q(d / "c.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    quant::StatsFile a((d / "a.safetensors").string()), b((d / "b.safetensors").string()),
        c((d / "c.safetensors").string());
    EXPECT_EQ(c.tasks(), (std::vector<std::string>{"synthetic", "synthetic"}));
    EXPECT_EQ(c.entries().size(), a.entries().size());
    for (const auto& [base, e] : c.entries()) {
        const LinearStats sa = a.load(base), sc = c.load(base);
        if (!b.has(base)) {
            EXPECT_EQ(sc.mean_abs, sa.mean_abs);
            EXPECT_EQ(sc.rows, sa.rows);
            continue;
        }
        const LinearStats sb = b.load(base);
        EXPECT_EQ(sc.n_tokens, 400);
        EXPECT_EQ(sc.n_rows(), 64);
        for (int i = 0; i < sc.in; ++i) {
            // (300 a + 100 b) / 400 in double, rounded once to f32: within 2^-24 relative.
            const double want = (300.0 * sa.mean_abs[i] + 100.0 * sb.mean_abs[i]) / 400.0;
            EXPECT_NEAR(sc.mean_abs[i], want, want * 0x1p-23) << base << " " << i;
            EXPECT_EQ(sc.max_abs[i], std::max(sa.max_abs[i], sb.max_abs[i]));
        }
        // Every merged row is one of the inputs' recorded rows.
        int from_a = 0;
        for (int64_t t = 0; t < sc.n_rows(); ++t) {
            auto found = [&](const LinearStats& s) {
                for (int64_t u = 0; u < s.n_rows(); ++u)
                    if (std::equal(&sc.rows[t * sc.in], &sc.rows[(t + 1) * sc.in],
                                   &s.rows[u * s.in]))
                        return true;
                return false;
            };
            const bool in_a = found(sa);
            from_a += in_a;
            EXPECT_TRUE(in_a || found(sb)) << base << " row " << t;
        }
        // 3/4 of the union's tokens are a's: 48 of 64 rows expected, binomial-like std ~3.
        EXPECT_GT(from_a, 30) << base;
        EXPECT_LT(from_a, 62) << base;
    }
}

TEST(StatsFile, BadFilesNameTheFileAndTensor) {
    TempDir d;
    auto write = [&](const std::string& name, const std::function<void(SafetensorsWriter&)>& f) {
        SafetensorsWriter w((d / name).string());
        w.set_metadata("lancet.stats.version", "1");
        f(w);
        w.finish();
        return (d / name).string();
    };
    const float good[4] = {1, 2, 3, 4};
    const float nan_v[4] = {1, NAN, 3, 4};
    const int64_t n = 10, neg = -1;
    // Non-finite mean: caught at load, naming the tensor and index.
    const std::string f1 = write("nan.safetensors", [&](SafetensorsWriter& w) {
        w.add("x.mean_abs", DType::F32, {4});
        w.add("x.max_abs", DType::F32, {4});
        w.add("x.n_tokens", DType::I64, {1});
        w.write("x.mean_abs", nan_v, 16);
        w.write("x.max_abs", good, 16);
        w.write("x.n_tokens", &n, 8);
    });
    quant::StatsFile s1(f1);
    try {
        s1.load("x");
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(f1 + ": x.mean_abs[1] = nan"), std::string::npos)
            << e.what();
    }
    // Negative token count.
    const std::string f2 = write("neg.safetensors", [&](SafetensorsWriter& w) {
        w.add("x.mean_abs", DType::F32, {4});
        w.add("x.max_abs", DType::F32, {4});
        w.add("x.n_tokens", DType::I64, {1});
        w.write("x.mean_abs", good, 16);
        w.write("x.max_abs", good, 16);
        w.write("x.n_tokens", &neg, 8);
    });
    EXPECT_THROW(quant::StatsFile(f2).load("x"), Error);
    // Inconsistent shapes are caught when opening.
    const std::string f3 = write("shape.safetensors", [&](SafetensorsWriter& w) {
        w.add("x.mean_abs", DType::F32, {4});
        w.add("x.max_abs", DType::F32, {2});
        w.add("x.n_tokens", DType::I64, {1});
        w.write("x.mean_abs", good, 16);
        w.write("x.max_abs", good, 8);
        w.write("x.n_tokens", &n, 8);
    });
    try {
        quant::StatsFile s3(f3);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(f3 + ": x.max_abs must be F32 [4]"), std::string::npos)
            << e.what();
    }
    // A missing part and a foreign tensor.
    const std::string f4 = write("part.safetensors", [&](SafetensorsWriter& w) {
        w.add("x.mean_abs", DType::F32, {4});
        w.write("x.mean_abs", good, 16);
    });
    EXPECT_THROW(quant::StatsFile{f4}, Error);
    const std::string f5 = write("foreign.safetensors", [&](SafetensorsWriter& w) {
        w.add("x.weight", DType::F32, {4});
        w.write("x.weight", good, 16);
    });
    EXPECT_THROW(quant::StatsFile{f5}, Error);
}

TEST(OutputDirOverlap, RecognisesFoldersThatDoNotExistYet) {
    TempDir d;
    fs::create_directory(d / "src");
    EXPECT_TRUE(path_overlaps((d / "src").string(), (d / "src").string()));
    EXPECT_TRUE(path_overlaps((d / "src").string(), (d / "src" / "new" / "deeper").string()));
    EXPECT_TRUE(path_overlaps((d / "src").string(), d.path().string() + "/"));
    EXPECT_TRUE(path_overlaps((d / "src").string(), (d / "src" / ".." / "src" / "x").string()));
    EXPECT_FALSE(path_overlaps((d / "src").string(), (d / "srcx").string()));
    EXPECT_FALSE(path_overlaps((d / "src").string(), (d / "other").string()));
}

TEST(ParallelChunks, CoversEveryIndexOnceAndRethrows) {
    ThreadPool pool(3);
    std::vector<int> hits(1000, 0);
    parallel_chunks(pool, 1000, 7, [&](int64_t b, int64_t e) {
        EXPECT_EQ(b % 7, 0);
        for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    for (int h : hits) EXPECT_EQ(h, 1);
    EXPECT_THROW(parallel_chunks(pool, 100, 1,
                                 [&](int64_t b, int64_t) {
                                     if (b == 57) fail("chunk ", b);
                                 }),
                 Error);
}

}  // namespace
}  // namespace lancet

namespace lancet {
namespace {

// quantize --sequential: the published layout, every decoder linear AWQ'd from statistics the run
// recorded itself. Layer 0 sees the embeddings either way, so its codes equal those quantized from
// calibrate()'s file over the same prompts; layer 1 sees rows that came through the quantized
// layer 0, so its codes differ. With --hessian every GPTQ ran on the full XᵀX, and the folder loads
// and runs.
TEST(QuantizeSequential, WritesThePublishedFormatFromItsOwnStatistics) {
    TempDir dir;
    const std::string src = test::synth_tiny(dir, "src");
    test::write_file(dir / "p.txt", "one prompt\nanother prompt, longer than the first one\n");
    CalibrateOptions co;
    co.model = src;
    co.prompts = {(dir / "p.txt").string()};
    co.out = (dir / "stats.st").string();
    co.latent_hw = 4;
    calibrate(co);
    QuantizeOptions qo;
    qo.src = src;
    qo.progress = false;
    qo.stats = co.out;
    qo.out = (dir / "plain").string();
    quantize_checkpoint(qo);
    qo.stats.clear();
    qo.sequential = true;
    qo.calib = co;
    qo.out = (dir / "seq").string();
    const json report = quantize_checkpoint(qo);
    check_layout(dir / "seq", dir / "src" / "model.safetensors", true);
    EXPECT_EQ(report["sequential"]["sequences"], 4);
    EXPECT_EQ(report["sequential"]["sequences_dropped"], 0);
    const json meta = read_json(dir / "seq" / "awq_meta.json");
    EXPECT_EQ(meta["awq_linears"], 28);
    EXPECT_EQ(meta["tasks_calibrated"].back(), "sequential");
    auto plain = LanceCheckpoint::open((dir / "plain").string());
    auto seq = LanceCheckpoint::open((dir / "seq").string());
    for (bool gen : {false, true}) {
        const PathNames l0 = path_names(0, gen), l1 = path_names(1, gen);
        for (PathLinear pl : kAllPathLinears) {
            EXPECT_EQ(read_quantized(*plain, l0[pl]).qweight, read_quantized(*seq, l0[pl]).qweight)
                << l0[pl];
            EXPECT_NE(read_quantized(*plain, l1[pl]).qweight, read_quantized(*seq, l1[pl]).qweight)
                << l1[pl];
        }
    }

    qo.calib.hessian = true;
    qo.out = (dir / "seq-h").string();
    const json rh = quantize_checkpoint(qo);
    check_layout(dir / "seq-h", dir / "src" / "model.safetensors", true);
    for (auto it = rh["linears"].begin(); it != rh["linears"].end(); ++it)
        EXPECT_TRUE(it.value()["full_hessian"].get<bool>()) << it.key();
    auto ck = LanceCheckpoint::open((dir / "seq-h").string());
    EXPECT_EQ(ck->kind(), CheckpointKind::Awq);
    const LanceWeights w(*ck);
    DecoderSession s(w);
    SequenceBuilder sb(ck->config());
    sb.text({1, 2, 3, 40, 50});
    Outputs out;
    s.forward(sb.build(), nullptr, false, out, {});
    for (float v : out.logits) ASSERT_TRUE(std::isfinite(v));

    // Bad combinations are one-line errors and leave nothing behind.
    qo.out = (dir / "bad").string();
    qo.calib.prompts.clear();
    EXPECT_THROW(quantize_checkpoint(qo), Error);
    qo.calib.prompts = {(dir / "p.txt").string()};
    qo.method = "rtn";
    EXPECT_THROW(quantize_checkpoint(qo), Error);
    qo.method = "awq-gptq";
    qo.calib.gen_steps = 3;
    EXPECT_THROW(quantize_checkpoint(qo), Error);
    EXPECT_FALSE(fs::exists(dir / "bad"));
    const auto r =
        run_lancet("quantize --sequential --src " + q(dir / "src") + " --out " + q(dir / "bad"));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("--prompts"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace lancet
