// `lancet serve`'s generation routes end to end: the real HTTP server with the real generation
// pipeline (server/gen_service over pipeline/generation) on the tiny synthetic checkpoint, driven
// by cpp-httplib's client over loopback sockets. Images are decoded and checked; the t2i route is
// compared pixel for pixel with `lancet run --task t2i`.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "io/image.h"
#include "io/video.h"
#include "pipeline/understanding.h"
#include "server/gen_service.h"
#include "server/http_server.h"
#include "server/media_input.h"
#include "test_util.h"

namespace lancet {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr size_t kMaxBody = 256 << 10;

class ServerGen : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        dir_ = new test::TempDir();
        const std::string model = test::synth_tiny(*dir_);
        server::ChatEngineOptions eo;
        eo.model = model;
        eo.threads = 1;
        eo.load_gen = true;
        engine_ = new server::ChatEngine(eo);
        server::GenServiceOptions go;
        go.model = model;
        go.vae = (*dir_ / "tiny" / "Wan2.2_VAE.pth").string();
        go.max_pixels = 64 * 64;
        go.max_images = 2;
        go.max_frames = 9;
        go.max_steps = 1000;
        fs::create_directories(*dir_ / "tmp");
        go.temp_parent = (*dir_ / "tmp").string();
        gen_ = new server::GenService(engine_->checkpoint(), engine_->tokenizer(),
                                      engine_->weights(), go);
        server::ServerOptions so;
        so.port = 0;
        so.max_body_bytes = kMaxBody;
        so.max_video_jobs = 1;
        so.keep_jobs = 2;
        so.vision = gen_->vision();
        so.max_image_pixels = 1 << 20;
        fs::create_directories(*dir_ / "allowed");
        so.allow_local_files = (*dir_ / "allowed").string();
        so.image_jobs = [](const json& b, const std::string* up, bool edit) {
            return gen_->image_job(b, up, edit);
        };
        so.video_jobs = [](const json& b) { return gen_->video_job(b); };
        http_ = new test::LoopbackServer(*engine_, so);
    }
    static void TearDownTestSuite() {
        delete http_;
        const std::string tmp = gen_->temp_dir();
        delete gen_;
        EXPECT_FALSE(fs::exists(tmp)) << "the temp folder was not removed";
        delete engine_;
        delete dir_;
    }
    static httplib::Client client() {
        httplib::Client c("127.0.0.1", http_->port());
        c.set_read_timeout(600, 0);
        return c;
    }
    static httplib::Result post(const std::string& path, const json& body) {
        auto c = client();
        return c.Post(path.c_str(), body.dump(), "application/json");
    }
    static void expect_error(const httplib::Result& r, int status, const std::string& needle) {
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, status) << r->body;
        const json j = json::parse(r->body);
        ASSERT_TRUE(j.contains("error")) << r->body;
        EXPECT_NE(j["error"]["message"].get<std::string>().find(needle), std::string::npos)
            << r->body;
    }
    static std::vector<ImageRGB8> images(const httplib::Result& r) {
        std::vector<ImageRGB8> out;
        EXPECT_TRUE(r);
        if (!r) return out;
        EXPECT_EQ(r->status, 200) << r->body;
        const json j = json::parse(r->body);
        EXPECT_TRUE(j["created"].is_number_integer());
        for (const json& d : j["data"]) {
            const std::string png = server::base64_decode(d["b64_json"], "b64_json");
            EXPECT_TRUE(is_image_magic({reinterpret_cast<const uint8_t*>(png.data()), png.size()}));
            // run's metadata chunks travel with the picture.
            EXPECT_NE(png.find(std::string("tEXtprompt\0", 11)), std::string::npos);
            EXPECT_NE(png.find(std::string("tEXtseed\0", 9)), std::string::npos);
            out.push_back(decode_image({reinterpret_cast<const uint8_t*>(png.data()), png.size()},
                                       "b64_json"));
        }
        return out;
    }
    static json video_status(const std::string& id) {
        auto c = client();
        auto r = c.Get(("/v1/videos/" + id).c_str());
        EXPECT_TRUE(r);
        return r ? json::parse(r->body) : json();
    }
    static json wait_video(const std::string& id) {
        json st;
        while ((st = video_status(id))["status"] == "queued" || st["status"] == "running")
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return st;
    }

    static test::TempDir* dir_;
    static server::ChatEngine* engine_;
    static server::GenService* gen_;
    static test::LoopbackServer* http_;
};
test::TempDir* ServerGen::dir_ = nullptr;
server::ChatEngine* ServerGen::engine_ = nullptr;
server::GenService* ServerGen::gen_ = nullptr;
test::LoopbackServer* ServerGen::http_ = nullptr;

TEST_F(ServerGen, ImagesHaveTheRequestedSizeAndOneSeedPerImage) {
    const auto im = images(post(
        "/v1/images/generations",
        {{"prompt", "a red fox in snow"}, {"size", "48x32"}, {"n", 2}, {"seed", 5}, {"steps", 3}}));
    ASSERT_EQ(im.size(), 2u);
    for (const ImageRGB8& i : im) {
        EXPECT_EQ(i.width, 48);
        EXPECT_EQ(i.height, 32);
    }
    EXPECT_NE(im[0].rgb, im[1].rgb);  // seed 5 and seed 6
    // The second image is what seed 6 alone gives.
    const auto one = images(
        post("/v1/images/generations",
             {{"prompt", "a red fox in snow"}, {"size", "48x32"}, {"seed", 6}, {"steps", 3}}));
    ASSERT_EQ(one.size(), 1u);
    EXPECT_EQ(one[0].rgb, im[1].rgb);
}

TEST_F(ServerGen, ImageEqualsRunTaskT2i) {
    const auto im = images(post("/v1/images/generations", {{"prompt", "a lighthouse at dusk"},
                                                           {"size", "64x48"},
                                                           {"seed", 11},
                                                           {"steps", 4},
                                                           {"cfg", 3.0}}));
    ASSERT_EQ(im.size(), 1u);
    const fs::path out = *dir_ / "run.png";
    // The in-process server runs the library's default arithmetic (exact): the CLI too.
    const auto r =
        test::run_lancet("--exact-activations run --model '" + (*dir_ / "tiny").string() +
                         "' --task t2i -p 'a lighthouse at dusk' --size 64x48 -s 11 "
                         "--steps 4 --cfg 3 -o '" +
                         out.string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const ImageRGB8 ref = read_image(out.string());
    EXPECT_EQ(ref.width, im[0].width);
    EXPECT_EQ(ref.height, im[0].height);
    EXPECT_EQ(ref.rgb, im[0].rgb) << "the server's picture differs from lancet run's";
}

TEST_F(ServerGen, EditsTakeAMultipartImage) {
    ImageRGB8 src;
    src.width = 40, src.height = 24;
    for (int i = 0; i < src.width * src.height * 3; ++i)
        src.rgb.push_back(static_cast<uint8_t>((i * 37) & 255));
    const std::string png = encode_png(src);
    httplib::MultipartFormDataItems items = {{"image", png, "src.png", "image/png"},
                                             {"prompt", "make it blue", "", ""},
                                             {"seed", "3", "", ""},
                                             {"steps", "2", "", ""},
                                             {"preset", "image_256res", "", ""}};
    auto c = client();
    const auto im = images(c.Post("/v1/images/edits", items));
    ASSERT_EQ(im.size(), 1u);
    EXPECT_GT(im[0].width, 0);
    EXPECT_EQ(im[0].width % 16, 0);
    EXPECT_EQ(im[0].height % 16, 0);
    // No image, a broken image, JSON instead of multipart: 400.
    expect_error(
        c.Post("/v1/images/edits", httplib::MultipartFormDataItems{{"prompt", "x", "", ""}}), 400,
        "image");
    expect_error(c.Post("/v1/images/edits",
                        httplib::MultipartFormDataItems{{"image", "not a png", "a.png", ""},
                                                        {"prompt", "x", "", ""}}),
                 400, "image");
    expect_error(c.Post("/v1/images/edits", "{}", "application/json"), 400, "multipart");
}

TEST_F(ServerGen, VideoJobRunsToAnMp4) {
    auto r = post("/v1/videos", {{"prompt", "waves on a beach"},
                                 {"size", "32x32"},
                                 {"frames", 5},
                                 {"steps", 3},
                                 {"seed", 1}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const std::string id = json::parse(r->body)["id"];
    const json st = wait_video(id);
    EXPECT_EQ(st["status"], "succeeded") << st.dump();
    EXPECT_EQ(st["steps"], 3);
    EXPECT_EQ(st["step"], 3);
    EXPECT_EQ(st["progress"], 100);
    auto c = client();
    auto content = c.Get(("/v1/videos/" + id + "/content").c_str());
    ASSERT_TRUE(content);
    ASSERT_EQ(content->status, 200);
    EXPECT_EQ(content->get_header_value("Content-Type"), "video/mp4");
    ASSERT_GT(content->body.size(), 8u);
    EXPECT_EQ(content->body.substr(4, 4), "ftyp");
    const fs::path mp4 = *dir_ / "got.mp4";
    test::write_file(mp4, content->body);
    VideoReader vr(mp4.string());
    EXPECT_EQ(vr.info().width, 32);
    EXPECT_EQ(vr.info().height, 32);
    EXPECT_EQ(vr.info().frame_count, 5);
    // Steps are counted in /metrics.
    const std::string metrics = c.Get("/metrics")->body;
    const size_t at = metrics.find("\nlancet_gen_steps_total ");
    ASSERT_NE(at, std::string::npos);
    EXPECT_GE(std::stod(metrics.substr(at + 24)), 3.0);
    // The file lives in the server's temp folder while the job is kept.
    size_t files = 0;
    for (const auto& e : fs::directory_iterator(gen_->temp_dir())) files += e.is_regular_file();
    EXPECT_GE(files, 1u);
}

TEST_F(ServerGen, I2vTakesADataUrl) {
    ImageRGB8 src;
    src.width = 32, src.height = 32;
    src.rgb.assign(32 * 32 * 3, 200);
    const std::string url = "data:image/png;base64," + server::base64_encode(encode_png(src));
    auto r = post("/v1/videos", {{"task", "i2v"},
                                 {"prompt", "it moves"},
                                 {"image", url},
                                 {"frames", 5},
                                 {"steps", 2},
                                 {"preset", "video_192p"}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json st = wait_video(json::parse(r->body)["id"]);
    EXPECT_EQ(st["status"], "succeeded") << st.dump();
    expect_error(post("/v1/videos", {{"task", "i2v"}, {"prompt", "x"}, {"image", "@@@"}}), 400,
                 "base64");
    expect_error(post("/v1/videos", {{"task", "i2v"}, {"prompt", "x"}}), 400, "image");
}

TEST_F(ServerGen, VideoEditTakesABase64Clip) {
    // A 5-frame 32x32 clip made with the MP4 writer, sent as bare base64.
    std::vector<float> frames(3 * 5 * 32 * 32);
    for (size_t i = 0; i < frames.size(); ++i)
        frames[i] = static_cast<float>((i * 13) % 200) / 100 - 1;
    const fs::path clip = *dir_ / "clip.mp4";
    write_mp4(clip.string(), frames.data(), 5, 32, 32);
    auto r = post("/v1/videos", {{"task", "video_edit"},
                                 {"prompt", "make it night"},
                                 {"video", server::base64_encode(test::read_file(clip))},
                                 {"steps", 2},
                                 {"preset", "video_192p"}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const std::string id = json::parse(r->body)["id"];
    EXPECT_EQ(wait_video(id)["status"], "succeeded");
    auto c = client();
    auto content = c.Get(("/v1/videos/" + id + "/content").c_str());
    ASSERT_EQ(content->status, 200);
    EXPECT_EQ(content->body.substr(4, 4), "ftyp");
}

TEST_F(ServerGen, DeleteCancelsBetweenSteps) {
    auto r = post("/v1/videos",
                  {{"prompt", "a long one"}, {"size", "32x32"}, {"frames", 5}, {"steps", 1000}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const std::string id = json::parse(r->body)["id"];
    while (video_status(id)["step"].get<int>() < 2)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    // Running: a second job waits, a third is refused.
    auto waiting = post("/v1/videos", {{"prompt", "b"}, {"size", "32x32"}, {"frames", 1}});
    ASSERT_EQ(waiting->status, 200) << waiting->body;
    auto full = post("/v1/videos", {{"prompt", "c"}, {"size", "32x32"}, {"frames", 1}});
    expect_error(full, 429, "full");
    EXPECT_EQ(full->get_header_value("Retry-After"), "10");
    auto c = client();
    const std::string wid = json::parse(waiting->body)["id"];
    ASSERT_TRUE(c.Delete(("/v1/videos/" + wid).c_str()));
    ASSERT_TRUE(c.Delete(("/v1/videos/" + id).c_str()));
    const json st = wait_video(id);
    EXPECT_EQ(st["status"], "cancelled");
    EXPECT_LT(st["step"].get<int>(), 1000);
    EXPECT_EQ(video_status(wid)["status"], "cancelled");
    auto content = c.Get(("/v1/videos/" + id + "/content").c_str());
    EXPECT_EQ(content->status, 409);
}

TEST_F(ServerGen, LimitsAnswerWithTheRightStatus) {
    const std::string gen = "/v1/images/generations";
    expect_error(post(gen, {{"prompt", "x"}, {"size", "50x48"}}), 400, "multiple of 16");
    expect_error(post(gen, {{"prompt", "x"}, {"size", "big"}}), 400, "WIDTHxHEIGHT");
    expect_error(post(gen, {{"prompt", "x"}, {"size", "128x64"}}), 400, "at most 4096");
    expect_error(post(gen, {{"prompt", "x"}, {"size", "32x32"}, {"n", 3}}), 400, "n must");
    expect_error(post(gen, {{"prompt", "x"}, {"size", "32x32"}, {"steps", 0}}), 400, "steps");
    expect_error(post(gen, {{"size", "32x32"}}), 400, "prompt");
    expect_error(post(gen, {{"prompt", "x"}, {"response_format", "url"}}), 400, "b64_json");
    expect_error(post(gen, {{"prompt", "x"}, {"preset", "huge"}}), 400, "preset");
    auto c = client();
    expect_error(c.Post(gen.c_str(), "{not json", "application/json"), 400, "");
    expect_error(c.Post(gen.c_str(), std::string(kMaxBody + 10, ' '), "application/json"), 413,
                 "exceeds");
    expect_error(post("/v1/videos", {{"prompt", "x"}, {"size", "32x32"}, {"frames", 10}}), 400,
                 "frames");
    expect_error(post("/v1/videos", {{"prompt", "x"}, {"task", "t2i"}}), 400, "task");
    expect_error(post("/v1/videos", {{"prompt", "x"}, {"task", "video_edit"}, {"video", "AAAA"}}),
                 400, "");
}

TEST_F(ServerGen, TheStoreIsBoundedAndRemovesFiles) {
    std::vector<std::string> ids;
    for (int i = 0; i < 3; ++i) {
        auto r =
            post("/v1/videos", {{"prompt", "p"}, {"size", "16x16"}, {"frames", 1}, {"steps", 1}});
        ASSERT_EQ(r->status, 200) << r->body;
        ids.push_back(json::parse(r->body)["id"]);
        EXPECT_EQ(wait_video(ids.back())["status"], "succeeded");
    }
    // keep_jobs = 2: the oldest is forgotten and its MP4 removed.
    auto c = client();
    EXPECT_EQ(c.Get(("/v1/videos/" + ids[0]).c_str())->status, 404);
    EXPECT_EQ(c.Get(("/v1/videos/" + ids[2] + "/content").c_str())->status, 200);
    size_t mp4 = 0;
    for (const auto& e : fs::directory_iterator(gen_->temp_dir()))
        mp4 += e.path().extension() == ".mp4";
    EXPECT_LE(mp4, 2u);
}

ImageRGB8 pattern(int w, int h) {
    ImageRGB8 img;
    img.width = w, img.height = h;
    for (int i = 0; i < w * h * 3; ++i)
        img.rgb.push_back(static_cast<uint8_t>((i * 29 + i / 7) & 255));
    return img;
}

json chat_with_image(const std::string& url, const std::string& question, int max_tokens) {
    return {{"messages",
             {{{"role", "user"},
               {"content",
                {{{"type", "image_url"}, {"image_url", {{"url", url}}}},
                 {{"type", "text"}, {"text", question}}}}}}},
            {"max_tokens", max_tokens}};
}

TEST_F(ServerGen, ChatImageRunsAsX2tImage) {
    const ImageRGB8 img = pattern(64, 48);
    const std::string png = encode_png(img);
    const std::string url = "data:image/png;base64," + server::base64_encode(png);
    auto r = post("/v1/chat/completions", chat_with_image(url, "What is in the picture?", 6));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    const std::string got = j["choices"][0]["message"]["content"];
    // The same question through the understanding pipeline (lancet run --task x2t_image's code).
    auto ck = LanceCheckpoint::open((*dir_ / "tiny").string());
    X2tOptions xo;
    xo.generate.max_new_tokens = 6;
    X2tRunner runner(*ck, engine_->tokenizer(), xo);
    const PixelTensor px =
        preprocess_image(img, x2t_default_preset(false), VisionStream::Vit).pixels;
    const X2tAnswer want = runner.answer(px, x2t_default_system(false), "What is in the picture?");
    EXPECT_EQ(got, want.text);
    EXPECT_EQ(j["usage"]["completion_tokens"].get<size_t>(), want.gen.tokens.size());
    // The ViT rows count as prompt tokens.
    EXPECT_GT(j["usage"]["prompt_tokens"].get<size_t>(), want.vit_tokens);

    // A local file inside --allow-local-files gives the same answer; one outside is refused.
    test::write_file(*dir_ / "allowed" / "pic.png", png);
    r = post("/v1/chat/completions", chat_with_image((*dir_ / "allowed" / "pic.png").string(),
                                                     "What is in the picture?", 6));
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["message"]["content"], want.text);
    test::write_file(*dir_ / "outside.png", png);
    expect_error(
        post("/v1/chat/completions", chat_with_image((*dir_ / "outside.png").string(), "q", 2)),
        400, "outside");
    expect_error(post("/v1/chat/completions",
                      chat_with_image((*dir_ / "allowed" / ".." / "outside.png").string(), "q", 2)),
                 400, "outside");
}

TEST_F(ServerGen, ChatImageErrorsAre400) {
    const std::string png = encode_png(pattern(32, 32));
    const std::string b64 = server::base64_encode(png);
    const std::string chat = "/v1/chat/completions";
    expect_error(post(chat, chat_with_image("data:image/png;base64,@@@", "q", 2)), 400, "base64");
    expect_error(post(chat, chat_with_image("data:text/plain;base64," + b64, "q", 2)), 400,
                 "image/png");
    expect_error(post(chat, chat_with_image("data:image/png;base64,AAAA", "q", 2)), 400, "");
    expect_error(post(chat, chat_with_image("https://example.com/a.png", "q", 2)), 400, "fetch");
    // 2000 x 1000 pixels is past the server's 1 MP limit (checked from the header).
    ImageRGB8 big;
    big.width = 2000, big.height = 1000;
    big.rgb.assign(size_t{2000} * 1000 * 3, 128);
    expect_error(
        post(chat, chat_with_image(
                       "data:image/png;base64," + server::base64_encode(encode_png(big)), "q", 2)),
        400, "pixels");
    // Two images, or an image in a longer conversation: no layout for it in Lance.
    json two = chat_with_image("data:image/png;base64," + b64, "q", 2);
    two["messages"][0]["content"].push_back(
        {{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64," + b64}}}});
    expect_error(post(chat, two), 400, "one image");
    json longer = chat_with_image("data:image/png;base64," + b64, "q", 2);
    longer["messages"].insert(longer["messages"].begin(),
                              json{{"role", "user"}, {"content", "hi"}});
    longer["messages"].insert(longer["messages"].begin() + 1,
                              json{{"role", "assistant"}, {"content", "hello"}});
    expect_error(post(chat, longer), 400, "one user message");
    json in_system = chat_with_image("data:image/png;base64," + b64, "q", 2);
    in_system["messages"][0]["role"] = "system";
    expect_error(post(chat, in_system), 400, "user message");
}

}  // namespace
}  // namespace lancet
