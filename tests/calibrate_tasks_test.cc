// `lancet calibrate --tasks`: every Lance task's real sequence (generation: the flow sampler's
// trajectory with CFG; x2t: the understanding prompt with its ViT rows) records rows on the right
// path in the counts the sequences imply; sharded runs (launcher variables, mpirun) reduce to the
// single-process file byte for byte; bad input is one line with nothing written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/image.h"
#include "io/video.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/vit.h"
#include "pipeline/calibrate.h"
#include "pipeline/gen_tasks.h"
#include "pipeline/preprocess.h"
#include "pipeline/understanding.h"
#include "quant/stats_file.h"
#include "test_util.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kQ0 = "language_model.model.layers.0.self_attn.q_proj";
const std::string kDown1 = "language_model.model.layers.1.mlp.down_proj";
const std::string kQ0Gen = "language_model.model.layers.0.self_attn.q_proj_moe_gen";
const std::string kDown1Gen = "language_model.model.layers.1.mlp_moe_gen.down_proj";
const std::string kVitQkv0 = "vit_model.blocks.0.attn.qkv";

using test::ScopedEnv;

json interleave(const std::string& a, const json& b, const char* ta, const char* tb) {
    return {{"interleave_array", {a, b}}, {"element_dtype_array", {ta, tb}}};
}

class CalibrateTasks : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        dir_ = new test::TempDir();
        test::synth_tiny(*dir_);
        const fs::path ex = *dir_ / "examples";
        fs::create_directories(ex / "images");
        fs::create_directories(ex / "videos");
        ImageRGB8 img(60, 44);  // a non-square source: the 4:3 bucket
        for (int y = 0; y < img.height; ++y)
            for (int x = 0; x < img.width; ++x) {
                uint8_t* p = img.row(y) + 3 * x;
                p[0] = static_cast<uint8_t>(4 * x), p[1] = static_cast<uint8_t>(5 * y);
                p[2] = static_cast<uint8_t>((x * y) % 251);
            }
        write_png((ex / "images" / "src.png").string(), img);
        if (video_support_built()) {
            const int T = 9, H = 32, W = 48;
            std::vector<float> v(3 * T * H * W);
            for (size_t i = 0; i < v.size(); ++i)
                v[i] = static_cast<float>(std::sin(0.01 * static_cast<double>(i)));
            write_mp4((ex / "videos" / "clip.mp4").string(), v.data(), T, H, W);
        }
        auto put = [&](const std::string& name, const json& j) {
            test::write_file(ex / name, j.dump(2));
        };
        put("t2i_example.json", {{"000.png", "A red fox in the snow."},
                                 {"001.png", "A blue boat on a lake."},
                                 {"002.png", "Three lanterns at night."}});
        put("t2v_example.json", {{"000.mp4", "Waves rolling onto a beach."}});
        put("i2v_example.json",
            {{"0001", interleave("The fox starts to run.", "config/x/src.png", "text", "image")}});
        put("image_edit_example.json",
            {{"0001", interleave("Remove the hat.", "config/x/src.png", "text", "image")},
             {"0002", interleave("Make it night.", "config/x/src.png", "text", "image")}});
        put("video_edit_example.json",
            {{"0001", interleave("Make the car red.", "config/v/clip.mp4", "text", "video")}});
        put("x2t_image_example.json",
            {{"0001", interleave("assets/src.png",
                                 {"Look at the image carefully and answer the question.",
                                  "What colour is it?", "Mostly red."},
                                 "image", "text")}});
        put("x2t_video_example.json",
            {{"0001", interleave("assets/clip.mp4",
                                 {"Watch the video carefully and answer the question.",
                                  "What moves?", "Nothing."},
                                 "video", "text")}});
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    static std::string model() { return (*dir_ / "tiny").string(); }
    static std::string examples() { return (*dir_ / "examples").string(); }
    static std::string png() { return (*dir_ / "examples" / "images" / "src.png").string(); }

    CalibrateOptions opts(const std::string& tasks, const std::string& out) {
        CalibrateOptions o;
        o.model = model();
        o.examples_dir = examples();
        for (size_t a = 0; a <= tasks.size();) {
            const size_t b = std::min(tasks.find(',', a), tasks.size());
            o.tasks.push_back(tasks.substr(a, b - a));
            a = b + 1;
        }
        o.out = out;
        o.size = "32x48";
        o.gen_steps = kSteps;
        o.rows = 64;
        return o;
    }
    std::string cli_args(const std::string& tasks, const std::string& size = "32x48") {
        return "-q calibrate -m " + model() + " --tasks " + tasks + " --examples-dir " +
               examples() + " --size " + size + " --gen-steps " + std::to_string(kSteps) +
               " --rows 64";
    }

    // Noisy-block forwards of one trajectory: every step, plus the unconditional branch on the
    // steps whose sigma lies in CFG's interval (0.4, 1] (computed from §3.1's grid here).
    static int noisy_forwards() {
        int f = 0;
        for (int k = 0; k < kSteps; ++k) {
            const double u = 1.0 - static_cast<double>(k) / kSteps;
            const double sigma = 3.5 * u / (1.0 + 2.5 * u);
            f += 1 + (sigma > 0.4 && sigma <= 1.0);
        }
        return f;
    }

    struct Expected {
        int64_t und = 0, gen = 0;
    };
    // Rows a generation item records, from its sequence: the prefix (before the noise split)
    // prefilled into the conditional cache and, without the caption, into the unconditional one;
    // then the noise split (two und markers around the target's gen rows) once per forward.
    static Expected gen_rows(const GenSequence& seq) {
        const Batch& b = seq.batch;
        size_t nb = 0, ne = 0, at = 0;
        for (const Split& s : b.splits) {
            if (s.mode == SplitMode::Noise) nb = at, ne = at + s.len;
            at += s.len;
        }
        int64_t und_pre = 0, gen_pre = 0, caption = 0, und_blk = 0, gen_blk = 0;
        for (size_t i = 0; i < ne; ++i) {
            const bool g = b.is_gen[i] != 0;
            if (i < nb) {
                (g ? gen_pre : und_pre)++;
                caption += seq.cfg_drop[i];
            } else {
                (g ? gen_blk : und_blk)++;
            }
        }
        EXPECT_EQ(und_blk, 2);
        const int F = noisy_forwards();
        return {und_pre + (und_pre - caption) + und_blk * F, 2 * gen_pre + gen_blk * F};
    }

    static constexpr int kSteps = 3;
    static test::TempDir* dir_;
};
test::TempDir* CalibrateTasks::dir_ = nullptr;

TEST_F(CalibrateTasks, EveryTaskRecordsItsRowsOnTheRightPath) {
    auto ck = LanceCheckpoint::open(model());
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model());
    const size_t C = cfg.latent_channels, H = cfg.hidden_size;
    const VitConfig& vc = cfg.vision;
    // Sizes of the media after calibration's default preset (image_256res).
    const PreprocessResult vae =
        preprocess_image(read_image(png()), "image_256res", VisionStream::Vae);
    const PreprocessResult vit =
        preprocess_image(read_image(png()), "image_256res", VisionStream::Vit);
    const int64_t lh = vae.pixels.H / 16, lw = vae.pixels.W / 16;
    const VitPlan plan = vit_plan(vc, 2, vit.pixels.H, vit.pixels.W, "test");
    const int64_t vit_patches = plan.gt * plan.gh * plan.gw;
    const VisionGrid vgrid{plan.gt, plan.gh, plan.gw};
    const int64_t m = vc.spatial_merge_size;
    const int64_t n_vit = plan.gt * (plan.gh / m) * (plan.gw / m);

    auto expect_gen_task = [&](const std::string& task, const std::vector<GenTaskInput>& ins,
                               int64_t vit_rows) {
        SCOPED_TRACE(task);
        const std::string out = (*dir_ / (task + ".safetensors")).string();
        calibrate(opts(task, out));
        Expected want;
        for (const GenTaskInput& in : ins) {
            const Expected e = gen_rows(build_gen_sequence(tok, cfg, in));
            want.und += e.und, want.gen += e.gen;
        }
        quant::StatsFile sf(out);
        EXPECT_EQ(sf.n_tokens(kQ0), want.und);
        EXPECT_EQ(sf.n_tokens(kDown1), want.und);
        EXPECT_EQ(sf.n_tokens(kQ0Gen), want.gen);
        EXPECT_EQ(sf.n_tokens(kDown1Gen), want.gen);
        if (vit_rows > 0)
            EXPECT_EQ(sf.n_tokens(kVitQkv0), vit_rows);
        else
            EXPECT_FALSE(sf.has(kVitQkv0));
        EXPECT_EQ(sf.capacity(), 64);
        EXPECT_EQ(sf.load(kQ0Gen).n_rows(), std::min<int64_t>(64, want.gen));
        ASSERT_EQ(sf.tasks().size(), 2u);
        EXPECT_EQ(sf.tasks()[0].rfind(task + ":", 0), 0u) << sf.tasks()[0];
        EXPECT_EQ(sf.tasks()[1].rfind("gen:trajectories steps=3", 0), 0u) << sf.tasks()[1];
    };
    auto input = [&](GenTask t, const std::string& caption, int64_t lt, int64_t h, int64_t w) {
        GenTaskInput in;
        in.task = t;
        in.caption = caption;
        in.lt = lt, in.lh = h, in.lw = w;
        in.noise.assign(static_cast<size_t>(gen_task_rows(in)) * C, 0.5f);
        if (t == GenTask::I2V)
            in.cond_latent.assign(static_cast<size_t>(h * w) * C, 0.5f);  // frame 0
        if (gen_task_is_edit(t)) {
            in.cond_latent.assign(static_cast<size_t>(lt * h * w) * C, 0.5f);
            in.vit_grid = vgrid;
            in.vit_rows.assign(static_cast<size_t>(n_vit) * H, 0.5f);
        }
        return in;
    };
    // t2i at --size 32x48: a 3x2 latent grid; no prefix gen rows, no ViT.
    expect_gen_task("t2i",
                    {input(GenTask::T2I, "A red fox in the snow.", 1, 3, 2),
                     input(GenTask::T2I, "A blue boat on a lake.", 1, 3, 2),
                     input(GenTask::T2I, "Three lanterns at night.", 1, 3, 2)},
                    0);
    // --frames 5 (the default) makes two latent frames, within the PE3D table.
    const int64_t lt = std::min<int64_t>(2, cfg.max_num_frames / 4 + 1);
    expect_gen_task("t2v", {input(GenTask::T2V, "Waves rolling onto a beach.", lt, 3, 2)}, 0);
    // i2v: the image's bucket sets the grid; its clean first frame is inside the noisy block.
    expect_gen_task("i2v", {input(GenTask::I2V, "The fox starts to run.", lt, lh, lw)}, 0);
    // image_edit: the ViT block (und) and the clean source latent (gen) in the prefix; the ViT
    // sees the image as two frames.
    expect_gen_task("image_edit",
                    {input(GenTask::ImageEdit, "Remove the hat.", 1, lh, lw),
                     input(GenTask::ImageEdit, "Make it night.", 1, lh, lw)},
                    2 * vit_patches);

    // x2t_image: the understanding prompt with the ViT rows, then the reference answer; nothing
    // reaches the gen path.
    {
        const std::string out = (*dir_ / "x2t_image.safetensors").string();
        calibrate(opts("x2t_image", out));
        const X2tPrompt p =
            build_x2t_prompt(cfg, tok, "Look at the image carefully and answer the question.",
                             "What colour is it?", vgrid, vc.spatial_merge_size);
        const int64_t want =
            static_cast<int64_t>(p.ids.size() + tok.encode("Mostly red.<|im_end|>").size());
        quant::StatsFile sf(out);
        EXPECT_EQ(sf.n_tokens(kQ0), want);
        EXPECT_EQ(sf.n_tokens(kVitQkv0), vit_patches);
        EXPECT_FALSE(sf.has(kQ0Gen));
        EXPECT_FALSE(sf.has(kDown1Gen));
    }
    if (!video_support_built()) GTEST_SKIP() << "no FFmpeg: video tasks not run";
    // video_edit: the clip's sampled frames are cut to the latent frames --frames allows (VAE:
    // 1 + 4 (lt - 1) frames; ViT: as many, made even); x2t_video: the whole clip through the ViT.
    {
        const std::string vid = (*dir_ / "examples" / "videos" / "clip.mp4").string();
        const PreprocessResult vv = preprocess_video(vid, "image_256res", VisionStream::Vae);
        const PreprocessResult vt = preprocess_video(vid, "image_256res", VisionStream::Vit);
        const int64_t keep = std::min<int64_t>(vv.pixels.T, 1 + 4 * (lt - 1));
        const VitPlan vp1 = vit_plan(vc, std::min<int64_t>(vt.pixels.T, keep + keep % 2),
                                     vt.pixels.H, vt.pixels.W, "test");
        GenTaskInput in;
        in.task = GenTask::VideoEdit;
        in.caption = "Make the car red.";
        in.lt = 1 + (keep - 1) / 4;
        in.lh = vv.pixels.H / 16, in.lw = vv.pixels.W / 16;
        in.noise.assign(static_cast<size_t>(gen_task_rows(in)) * C, 0.5f);
        in.cond_latent.assign(static_cast<size_t>(in.lt * in.lh * in.lw) * C, 0.5f);
        in.vit_grid = {vp1.gt, vp1.gh, vp1.gw};
        in.vit_rows.assign(static_cast<size_t>(vp1.gt * (vp1.gh / m) * (vp1.gw / m)) * H, 0.5f);
        expect_gen_task("video_edit", {in}, vp1.gt * vp1.gh * vp1.gw);

        const std::string out = (*dir_ / "x2t_video.safetensors").string();
        calibrate(opts("x2t_video", out));
        const VitPlan vpa = vit_plan(vc, vt.pixels.T, vt.pixels.H, vt.pixels.W, "test");
        const X2tPrompt p =
            build_x2t_prompt(cfg, tok, "Watch the video carefully and answer the question.",
                             "What moves?", {vpa.gt, vpa.gh, vpa.gw}, vc.spatial_merge_size);
        quant::StatsFile sf(out);
        EXPECT_EQ(sf.n_tokens(kQ0),
                  static_cast<int64_t>(p.ids.size() + tok.encode("Nothing.<|im_end|>").size()));
        EXPECT_EQ(sf.n_tokens(kVitQkv0), vpa.gt * vpa.gh * vpa.gw);
        EXPECT_FALSE(sf.has(kQ0Gen));
    }
}

// Two and three ranks from each launcher's variables (and mpirun when installed) write parts
// that rank 0 or --merge reduce to the single-process file, byte for byte.
TEST_F(CalibrateTasks, ShardedRunsReduceToTheSingleProcessBytes) {
    const std::string tasks = "t2i,image_edit,x2t_image";
    const fs::path one = *dir_ / "one.safetensors";
    const auto r1 = test::run_lancet(cli_args(tasks) + " -o " + one.string());
    ASSERT_EQ(r1.exit_code, 0) << r1.err;
    const std::string want = test::read_file(one);
    ASSERT_FALSE(fs::exists(one.string() + ".parts"));

    struct Launcher {
        const char *rank, *size;
        int world;
        bool indexed;
    };
    const Launcher launchers[] = {
        {"RANK", "WORLD_SIZE", 2, false},
        {"SLURM_PROCID", "SLURM_NTASKS", 3, false},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", 2, false},
        {"JOB_COMPLETION_INDEX", nullptr, 7, true}};  // 6 items: rank 6 has none
    for (const Launcher& l : launchers) {
        SCOPED_TRACE(l.rank);
        const fs::path out = *dir_ / (std::string(l.rank) + ".safetensors");
        // The other ranks first, so rank 0 finds every part and reduces at once.
        for (int r = l.world - 1; r >= 0; --r) {
            std::unique_ptr<ScopedEnv> env;
            if (l.indexed)
                env = std::make_unique<ScopedEnv>(
                    std::initializer_list<std::pair<const char*, std::string>>{
                        {l.rank, std::to_string(r)}});
            else
                env = std::make_unique<ScopedEnv>(
                    std::initializer_list<std::pair<const char*, std::string>>{
                        {l.rank, std::to_string(r)}, {l.size, std::to_string(l.world)}});
            const auto res = test::run_lancet(
                cli_args(tasks) + " -o " + out.string() +
                (l.indexed ? " --world-size " + std::to_string(l.world) : std::string()));
            ASSERT_EQ(res.exit_code, 0) << res.err;
            EXPECT_TRUE(fs::exists(calibrate_part_path(out.string(), r, l.world)));
            EXPECT_EQ(fs::exists(out), r == 0);
        }
        EXPECT_EQ(test::read_file(out), want);
        // --merge joins the same parts again (into another file), to the same bytes.
        const fs::path again = *dir_ / (std::string(l.rank) + "-merged.safetensors");
        const auto m = test::run_lancet("-q calibrate --merge " + again.string() + " " +
                                        (out.string() + ".parts/*"));
        ASSERT_EQ(m.exit_code, 0) << m.err;
        EXPECT_EQ(test::read_file(again), want);
    }

    // A part of another run (other settings: another fingerprint) is refused.
    {
        const fs::path other = *dir_ / "other.safetensors";
        ScopedEnv env({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
        ASSERT_EQ(test::run_lancet(cli_args(tasks) + " --seed 7 -o " + other.string()).exit_code,
                  0);
        const auto m = test::run_lancet(
            "-q calibrate --merge " + (*dir_ / "mixed.safetensors").string() + " " +
            calibrate_part_path((*dir_ / "RANK.safetensors").string(), 0, 2) + " " +
            calibrate_part_path(other.string(), 1, 2));
        EXPECT_EQ(m.exit_code, 1);
        EXPECT_NE(m.err.find("a part of another calibration run"), std::string::npos) << m.err;
        EXPECT_FALSE(fs::exists(*dir_ / "mixed.safetensors"));
        // Rank 0 alone cannot reduce without rank 1.
        const auto miss =
            test::run_lancet("-q calibrate --merge " + (*dir_ / "half.safetensors").string() + " " +
                             calibrate_part_path((*dir_ / "RANK.safetensors").string(), 0, 2));
        EXPECT_EQ(miss.exit_code, 1);
        EXPECT_EQ(miss.err, "lancet: error: stats reduce: the part of rank 1 of 2 is missing\n");
        EXPECT_FALSE(fs::exists(*dir_ / "half.safetensors"));
    }

    if (std::system("command -v mpirun >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
    const std::string bin = test::lancet_bin();
    const fs::path out = *dir_ / "mpi.safetensors";
    const std::string cmd =
        "timeout -s KILL 300 mpirun -np 2 --oversubscribe --allow-run-as-root " + bin + " " +
        cli_args(tasks) + " -o " + out.string() + " >" + (*dir_ / "mpi.log").string() + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << test::read_file(*dir_ / "mpi.log");
    EXPECT_EQ(test::read_file(out), want);  // rank 0 waited for rank 1's part and reduced
}

// --hessian with task trajectories on one rank records H for every linear; with several ranks
// it is refused up front (H is summed in an order-dependent way, so parts would not reduce to
// the single-process bytes), one line, no part written.
TEST_F(CalibrateTasks, HessianOnOneRankOnly) {
    const fs::path one = *dir_ / "hessian.safetensors";
    const auto r1 = test::run_lancet(cli_args("t2i") + " --hessian -o " + one.string());
    ASSERT_EQ(r1.exit_code, 0) << r1.err;
    quant::StatsFile sf(one.string());
    ASSERT_TRUE(sf.has(kQ0Gen));
    EXPECT_TRUE(sf.entries().at(kQ0Gen).hessian);
    EXPECT_TRUE(sf.entries().at(kQ0).hessian);
    const quant::LinearStats s = sf.load(kQ0Gen);
    EXPECT_EQ(static_cast<int64_t>(s.hessian.size()), quant::packed_size(s.in));

    const fs::path out = *dir_ / "hessian2.safetensors";
    const ScopedEnv env({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
    const auto r2 = test::run_lancet(cli_args("t2i") + " --hessian -o " + out.string());
    EXPECT_EQ(r2.exit_code, 1);
    EXPECT_NE(r2.err.find("lancet: error: calibrate: --hessian runs on one rank only"),
              std::string::npos)
        << r2.err;
    EXPECT_EQ(std::count(r2.err.begin(), r2.err.end(), '\n'), 1) << r2.err;
    EXPECT_FALSE(fs::exists(out.string() + ".parts"));
    EXPECT_FALSE(fs::exists(out));
}

TEST_F(CalibrateTasks, BadInputIsOneLineAndWritesNothing) {
    const test::TempDir tmp;
    const fs::path out = tmp / "s.safetensors";
    auto expect_error = [&](const std::string& args, const std::string& what) {
        SCOPED_TRACE(args);
        const auto r = test::run_lancet(args + " -o " + out.string());
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_EQ(r.err.rfind("lancet: error: ", 0), 0u) << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
        EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
        EXPECT_FALSE(fs::exists(out));
        EXPECT_FALSE(fs::exists(out.string() + ".parts"));
    };
    expect_error(cli_args("t2i,t2x"), "unknown task 't2x'");
    // A folder without the task's file.
    fs::create_directories(tmp / "ex");
    test::write_file(tmp / "ex" / "t2i_example.json", R"({"0.png": "a cat"})");
    expect_error(
        "-q calibrate -m " + model() + " --tasks t2i,i2v --examples-dir " + (tmp / "ex").string(),
        "i2v_example.json: no such examples file (task i2v)");
    // An item whose image is missing, named with its path; skipped on request.
    test::write_file(tmp / "ex" / "i2v_example.json",
                     json({{"0001", interleave("run", "config/x/src.png", "text", "image")},
                           {"0002", interleave("jump", "config/x/gone.png", "text", "image")}})
                         .dump());
    fs::create_directories(tmp / "ex" / "images");
    fs::copy_file(png(), tmp / "ex" / "images" / "src.png");
    expect_error("-q calibrate -m " + model() + " --tasks i2v --examples-dir " +
                     (tmp / "ex").string() + " --gen-steps 1",
                 "item 0002: config/x/gone.png not found");
    const auto ok = test::run_lancet("-q calibrate -m " + model() +
                                     " --tasks i2v --gen-steps 1 --skip-missing-media "
                                     "--examples-dir " +
                                     (tmp / "ex").string() + " -o " + out.string());
    ASSERT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_EQ(
        quant::StatsFile(out.string()).tasks()[0].find("(1 items, 1 skipped)") != std::string::npos,
        true);
    fs::remove(out);
    // A missing examples folder, a bad size, a size beyond the PE3D table.
    expect_error(
        "-q calibrate -m " + model() + " --tasks t2i --examples-dir " + (tmp / "nowhere").string(),
        "no such folder");
    expect_error(cli_args("t2i", "30x32"), "is not a positive multiple of 16");
    expect_error(cli_args("t2i", "32"), "is not WIDTHxHEIGHT");
    expect_error("-q calibrate -m " + model() + " --tasks t2i", "--tasks needs --examples-dir");
}

}  // namespace
}  // namespace lancet
