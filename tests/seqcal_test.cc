// Tests of the full XᵀX in the statistics (accumulation against a float64 Gram matrix, the file,
// merging, GPTQ's use of it), the layer-by-layer decoder entry point against forward(), and
// sequential calibration: advanced through the original weights it must reproduce calibrate()'s
// statistics exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/calibrate.h"
#include "quant/act_stats.h"
#include "quant/awq.h"
#include "quant/stats_file.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::synth_tiny;
using test::TempDir;

std::vector<float> random_rows(int64_t n, int in, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> x(static_cast<size_t>(n) * in);
    for (int64_t t = 0; t < n; ++t)
        for (int i = 0; i < in; ++i)  // channels of different scales, non-zero mean
            x[t * in + i] = static_cast<float>(rng.normal() * (1 + i % 5) + 0.3 * (i % 3));
    return x;
}

// H from the accumulator against Σ_t x_ti x_tj in float64. Each batch of up to kHessianBatch rows
// is one f32 dot product per entry (|error| <= k 2^-24 Σ|x_ti x_tj| over the batch, k its length,
// gemm.h), the batches then add in double; so |H - H64|_ij <= kHessianBatch 2^-24 Σ_t |x_ti x_tj|.
TEST(Hessian, AccumulatesXtXOverEveryRowWithinTheF32DotBound) {
    const int in = 37;
    const int64_t n = 700;  // 2 full batches and a partial one
    const std::vector<float> x = random_rows(n, in, 11);
    quant::StatsAccumulator acc(in, 16, 5, /*hessian=*/true);
    // Uneven chunks, as the decoder's row blocks come.
    for (int64_t t = 0, step = 1; t < n; t += step, step = step * 3 % 97 + 1)
        acc.add_rows(&x[t * in], std::min(step, n - t), in);
    const quant::LinearStats s = acc.stats();
    ASSERT_TRUE(s.has_hessian());
    ASSERT_EQ(static_cast<int64_t>(s.hessian.size()), quant::packed_size(in));
    EXPECT_EQ(s.n_rows(), 16);  // the reservoir is unaffected
    double worst = 0;
    for (int i = 0; i < in; ++i)
        for (int j = i; j < in; ++j) {
            double h = 0, mag = 0;
            for (int64_t t = 0; t < n; ++t) {
                const double p = static_cast<double>(x[t * in + i]) * x[t * in + j];
                h += p;
                mag += std::fabs(p);
            }
            const double bound = quant::StatsAccumulator::kHessianBatch * 0x1p-24 * mag + 1e-12;
            const double err = std::fabs(s.hessian[quant::packed_index(in, i, j)] - h);
            EXPECT_LE(err, bound) << i << ", " << j;
            worst = std::max(worst, err / bound);
        }
    std::printf("worst |H - H64| / bound = %.3g\n", worst);
    // The full matrix is symmetric and holds the same values.
    const std::vector<float> full = quant::unpack_symmetric(s.hessian, in);
    EXPECT_EQ(full[3 * in + 20], full[20 * in + 3]);
    EXPECT_EQ(full[3 * in + 20], static_cast<float>(s.hessian[quant::packed_index(in, 3, 20)]));
}

// Written as F32 (one rounding), read back, and merged: the Hessians of disjoint token sets add.
TEST(Hessian, FileRoundTripAndMergeSum) {
    TempDir dir;
    const int in = 24;
    const std::vector<float> xa = random_rows(300, in, 1), xb = random_rows(120, in, 2);
    quant::StatsAccumulator a(in, 32, 1, true), b(in, 32, 2, true), plain(in, 32, 3, false);
    a.add_rows(xa.data(), 300, in);
    b.add_rows(xb.data(), 120, in);
    plain.add_rows(xb.data(), 120, in);
    const quant::LinearStats sa = a.stats(), sb = b.stats();
    for (const auto& [name, acc, st] : {std::tuple{"a", &a, &sa}, std::tuple{"b", &b, &sb}}) {
        quant::StatsFileWriter w((dir / (std::string(name) + ".st")).string(), {"t"}, 32);
        w.declare("lin", in, acc->n_rows(), false, true);
        w.write("lin", *st);
        w.finish();
    }
    {
        quant::StatsFileWriter w((dir / "plain.st").string(), {"t"}, 32);
        w.declare("lin", in, plain.n_rows());
        EXPECT_THROW(w.write("lin", sb), Error);  // a Hessian that was not declared
    }
    const quant::StatsFile fa((dir / "a.st").string());
    ASSERT_TRUE(fa.entries().at("lin").hessian);
    const quant::LinearStats ra = fa.load("lin");
    ASSERT_EQ(ra.hessian.size(), sa.hessian.size());
    for (size_t k = 0; k < ra.hessian.size(); ++k)
        EXPECT_EQ(ra.hessian[k], static_cast<double>(static_cast<float>(sa.hessian[k]))) << k;
    quant::merge_stats_files({(dir / "a.st").string(), (dir / "b.st").string()},
                             (dir / "m.st").string());
    const quant::LinearStats m = quant::StatsFile((dir / "m.st").string()).load("lin");
    ASSERT_TRUE(m.has_hessian());
    for (size_t k = 0; k < m.hessian.size(); ++k) {
        const double want = static_cast<float>(sa.hessian[k]) + static_cast<float>(sb.hessian[k]);
        EXPECT_NEAR(m.hessian[k], want, 0x1p-23 * (std::fabs(want) + 1e-30)) << k;
    }
    // A wrongly sized Hessian is a one-line error naming the tensor.
    {
        SafetensorsWriter w((dir / "bad.st").string());
        w.set_metadata("lancet.stats.version", "1");
        w.add("lin.mean_abs", DType::F32, {in});
        w.add("lin.max_abs", DType::F32, {in});
        w.add("lin.n_tokens", DType::I64, {1});
        w.add("lin.hessian", DType::F32, {in * in});
        w.begin();
        std::vector<float> z(static_cast<size_t>(in) * in, 0.0f);
        int64_t nt = 1;
        w.write("lin.mean_abs", z.data(), in * 4);
        w.write("lin.max_abs", z.data(), in * 4);
        w.write("lin.n_tokens", &nt, 8);
        w.write("lin.hessian", z.data(), z.size() * 4);
        w.finish();
    }
    try {
        quant::StatsFile bad((dir / "bad.st").string());
        ADD_FAILURE() << "accepted a wrongly sized Hessian";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("lin.hessian"), std::string::npos) << e.what();
    }
}

// With every input in the reservoir (n_tokens <= capacity), the full XᵀX less the held-out rows is
// the search rows' Gram matrix, so GPTQ from the statistics' H must agree with GPTQ from the rows
// (up to the f32 rounding of the two ways of summing, which can flip a code at a tie). Getting
// the held-out subtraction or the 1/(s_i s_j) scaling wrong changes many codes.
TEST(Hessian, GptqFromFullHessianMatchesTheRowsWhenTheyAreAll) {
    const int in = 128, out = 48;
    const std::vector<float> x = random_rows(400, in, 7);
    quant::StatsAccumulator acc(in, 512, 3, true);
    acc.add_rows(x.data(), 400, in);
    const quant::LinearStats st = acc.stats();
    Rng rng(9);
    std::vector<float> w(static_cast<size_t>(out) * in);
    for (float& v : w) v = static_cast<float>(rng.normal() * 0.05);
    quant::AwqOptions o;
    o.feedback = quant::AwqOptions::Feedback::AwqGptq;
    o.compare = false;
    o.gptq_full_hessian = false;
    const quant::AwqResult rows = quant::awq_search({{"w", w.data(), out}}, in, &st, o);
    o.gptq_full_hessian = true;
    const quant::AwqResult full = quant::awq_search({{"w", w.data(), out}}, in, &st, o);
    EXPECT_FALSE(rows.full_hessian);
    ASSERT_TRUE(full.full_hessian);
    ASSERT_EQ(rows.chosen, "awq-gptq");
    ASSERT_EQ(full.chosen, "awq-gptq");
    const auto& a = rows.consumers[0].q.qweight;
    const auto& b = full.consumers[0].q.qweight;
    int differ = 0;
    for (size_t k = 0; k < a.size(); ++k) differ += (a[k] & 15) != (b[k] & 15);
    for (size_t k = 0; k < a.size(); ++k) differ += (a[k] >> 4) != (b[k] >> 4);
    std::printf("codes that differ: %d of %zu\n", differ, 2 * a.size());
    EXPECT_LE(differ, static_cast<int>(2 * a.size() / 200));  // <= 0.5 %
    EXPECT_NEAR(full.result.heldout, rows.result.heldout, 0.02 * rows.result.heldout);
}

// embed_inputs + forward_layer over every layer with layers loaded by load_layer_path reproduce
// forward()'s residual stream after every layer bit for bit, on a sequence with und and gen rows.
TEST(DecoderLayerByLayer, EqualsForwardBitForBit) {
    TempDir dir;
    auto ck = LanceCheckpoint::open(synth_tiny(dir));
    const LanceConfig& cfg = ck->config();
    const LanceWeights weights(*ck);
    DecoderSession s(weights);
    Rng rng(4);
    std::vector<float> lat(3 * 4 * cfg.latent_channels);
    for (float& v : lat) v = static_cast<float>(rng.normal());
    SequenceBuilder sb(cfg);
    sb.text({1, 20, 33, 47, 5, 9});
    sb.latent_block(1, 3, 4, lat, 0.6f, SplitMode::Noise);
    sb.text({70, 71}, SplitMode::Causal);
    const Batch b = sb.build();
    Outputs out;
    ForwardOptions fo;
    fo.layer_out = true;
    s.forward(b, nullptr, false, out, fo);

    DecoderOptions eo;
    eo.embeddings_only = true;
    const LanceWeights emb_only(*ck, eo);
    DecoderSession ls(emb_only);
    const size_t H = cfg.hidden_size;
    std::vector<float> x(b.size() * H);
    ls.embed_inputs(b, x.data());
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
        const LayerPathWeights und = load_layer_path(*ck, l, false, false),
                               gen = load_layer_path(*ck, l, true, false);
        ls.forward_layer(b, l, &und, &gen, x.data(), {});
        ASSERT_EQ(out.layer_out[l].size(), x.size());
        EXPECT_EQ(std::memcmp(out.layer_out[l].data(), x.data(), x.size() * 4), 0) << l;
    }
    // The embeddings-only weights cannot run forward(); a missing path's weights are an error.
    EXPECT_THROW(ls.forward(b, nullptr, false, out, {}), Error);
    const LayerPathWeights und = load_layer_path(*ck, 0, false, false);
    EXPECT_THROW(ls.forward_layer(b, 0, &und, nullptr, x.data(), {}), Error);
}

// Sequential calibration advanced through the ORIGINAL weights (quantization switched to the
// identity) records exactly what calibrate() records, tensor for tensor and byte for byte,
// Hessians included: the same rows reach every observer in the same order.
TEST(SequentialCalibration, IdentityQuantizationReproducesCalibrate) {
    TempDir dir;
    const std::string model = synth_tiny(dir);
    test::write_file(dir / "p.txt",
                     "A red fox jumps.\nSequential calibration, layer by layer.\nThird line!\n");
    CalibrateOptions o;
    o.model = model;
    o.prompts = {(dir / "p.txt").string()};
    o.out = (dir / "calib.st").string();
    o.latent_hw = 4;
    o.rows = 24;  // fewer than the tokens: the reservoir's draws are compared too
    o.hessian = true;
    calibrate(o);

    auto ck = LanceCheckpoint::open(model);
    const LanceConfig& cfg = ck->config();
    SequentialCalibration seq(o, *ck, 1 << 20);
    EXPECT_EQ(seq.n_sequences(), 6u);  // three prompts, each text + t2i proxy
    EXPECT_EQ(seq.dropped(), 0u);
    ASSERT_TRUE(seq.has_gen_rows());
    DecoderStatsSlots all(static_cast<size_t>(cfg.num_hidden_layers) * 2);
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
        const LayerPathWeights und = load_layer_path(*ck, l, false, true),
                               gen = load_layer_path(*ck, l, true, true);
        DecoderStatsSlots got = seq.record(l, und, &gen);
        for (int g = 0; g < 2; ++g)
            for (int k = 0; k < kLinearInputs; ++k) all[l * 2 + g][k] = std::move(got[g][k]);
        seq.advance(l, und, &gen);
    }
    {
        quant::StatsFileWriter w((dir / "seq.st").string(), seq.tasks(), o.rows);
        write_decoder_stats(w, cfg, all, {});
    }
    auto a = Checkpoint::open(o.out);
    auto b = Checkpoint::open((dir / "seq.st").string());
    ASSERT_EQ(a->names(), b->names());
    int hessians = 0;
    for (const std::string& name : a->names()) {
        const TensorView va = a->view(name), vb = b->view(name);
        ASSERT_EQ(va.nbytes, vb.nbytes) << name;
        EXPECT_EQ(std::memcmp(va.data, vb.data, va.nbytes), 0) << name;
        hessians += name.ends_with(".hessian");
    }
    EXPECT_EQ(hessians, cfg.num_hidden_layers * 2 * 7);

    // A row budget below the whole set leaves later sequences out.
    const size_t half = seq.n_rows() / 2;
    SequentialCalibration small(o, *ck, static_cast<int64_t>(half));
    EXPECT_GT(small.dropped(), 0u);
    EXPECT_GT(small.n_sequences(), 0u);
    EXPECT_LE(small.n_rows(), half);
    EXPECT_EQ(small.n_sequences() + small.dropped(), 6u);
    o.gen_steps = 2;
    EXPECT_THROW(SequentialCalibration(o, *ck, 1 << 20), Error);
}

}  // namespace
}  // namespace lancet
