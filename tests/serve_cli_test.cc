// The `lancet serve` binary itself, driven by curl: start-up line, chat, streaming, a wrong key,
// and a clean stop on SIGTERM.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

std::string shell(const std::string& cmd) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
}

// Starts `lancet serve ARGS` on a free port; returns the pid and fills the base URL.
int start_server(const test::TempDir& dir, const std::string& args, std::string* url) {
    // A log of its own per start: a second start must not read the first one's port.
    static int starts = 0;
    const std::string n = std::to_string(++starts);
    const fs::path log = dir / ("serve-" + n + ".log"), pidfile = dir / ("pid-" + n);
    const std::string start = test::lancet_bin() + " serve " + args + " --port 0 2>" +
                              log.string() + " & echo $! >" + pidfile.string();
    EXPECT_EQ(std::system(start.c_str()), 0);
    const int pid = std::stoi(test::read_file(pidfile));
    std::string port;
    while (port.empty()) {
        const std::string text = test::read_file(log);
        const size_t p = text.find("serving http://127.0.0.1:");
        if (p != std::string::npos && text.find("/ (", p) != std::string::npos)
            port = text.substr(p + 25, text.find('/', p + 25) - (p + 25));
        if (kill(pid, 0) != 0) {
            ADD_FAILURE() << "the server exited: " << text;
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    *url = "http://127.0.0.1:" + port;
    return pid;
}

void stop_server(int pid) {
    kill(pid, SIGTERM);
    auto alive = [pid] {
        if (kill(pid, 0) != 0) return false;
        const std::string stat = test::read_file("/proc/" + std::to_string(pid) + "/stat");
        const size_t p = stat.rfind(')');
        return p == std::string::npos || p + 2 >= stat.size() || stat[p + 2] != 'Z';
    };
    while (alive()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

TEST(ServeCli, CurlAgainstTheBinary) {
    if (std::system("command -v curl >/dev/null 2>&1") != 0) GTEST_SKIP() << "curl not installed";
    test::TempDir dir;
    std::string url;
    const int pid = start_server(dir, "-m " + test::synth_tiny(dir) + " --api-key k1", &url);
    ASSERT_GT(pid, 0);
    const std::string body = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4})";
    const std::string ok = shell("curl -s -H 'Authorization: Bearer k1' " + url +
                                 "/v1/chat/completions -d '" + body + "'");
    const auto j = nlohmann::json::parse(ok);
    EXPECT_EQ(j["object"], "chat.completion") << ok;
    EXPECT_EQ(j["usage"]["completion_tokens"].get<int>() + j["usage"]["prompt_tokens"].get<int>(),
              j["usage"]["total_tokens"].get<int>());
    const std::string sse = shell(
        "curl -s -N -H 'Authorization: Bearer k1' " + url + "/v1/chat/completions -d '" +
        R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true})" + "'");
    EXPECT_EQ(sse.rfind("data: {", 0), 0u) << sse;
    EXPECT_NE(sse.find("data: [DONE]\n\n"), std::string::npos) << sse;
    EXPECT_EQ(shell("curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer k2' " + url +
                    "/v1/models"),
              "401");
    EXPECT_EQ(shell("curl -s -o /dev/null -w '%{http_code}' " + url + "/health"), "200");
    stop_server(pid);
}

// The generation routes through the binary: the VAE in the model folder turns them on, a PNG and
// an MP4 come back, the temp folder under --tmp-dir is gone after SIGTERM; --no-generation: 501.
TEST(ServeCli, GenerationThroughTheBinary) {
    if (std::system("command -v curl >/dev/null 2>&1") != 0) GTEST_SKIP() << "curl not installed";
    test::TempDir dir;
    const std::string model = test::synth_tiny(dir);
    fs::create_directories(dir / "tmp");
    std::string url;
    int pid = start_server(dir, "-m " + model + " --tmp-dir " + (dir / "tmp").string(), &url);
    ASSERT_GT(pid, 0);
    const std::string json_h = " -H 'Content-Type: application/json' ";
    const fs::path png = dir / "out.png";
    EXPECT_EQ(shell("curl -s -o " + png.string() + " -w '%{http_code}'" + json_h + url +
                    "/v1/images/generations -d '{\"prompt\":\"a fox\",\"size\":\"32x16\","
                    "\"steps\":2}'"),
              "200");
    const auto reply = nlohmann::json::parse(test::read_file(png));
    EXPECT_EQ(reply["data"].size(), 1u);
    const std::string job = shell("curl -s" + json_h + url +
                                  "/v1/videos -d '{\"prompt\":\"waves\",\"size\":\"16x16\","
                                  "\"frames\":5,\"steps\":2}'");
    const std::string id = nlohmann::json::parse(job)["id"];
    std::string state;
    while ((state = nlohmann::json::parse(
                shell("curl -s " + url + "/v1/videos/" + id))["status"]) == "queued" ||
           state == "running")
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(state, "succeeded");
    const std::string mp4 = shell("curl -s " + url + "/v1/videos/" + id + "/content");
    ASSERT_GT(mp4.size(), 8u);
    EXPECT_EQ(mp4.substr(4, 4), "ftyp");
    size_t entries = 0;
    for (const auto& e : fs::directory_iterator(dir / "tmp")) entries += !e.path().empty();
    EXPECT_EQ(entries, 1u);  // the server's temp folder
    stop_server(pid);
    EXPECT_TRUE(fs::is_empty(dir / "tmp")) << "the temp folder outlived the server";

    pid = start_server(dir, "-m " + model + " --no-generation", &url);
    ASSERT_GT(pid, 0);
    EXPECT_EQ(shell("curl -s -o /dev/null -w '%{http_code}'" + json_h + url +
                    "/v1/images/generations -d '{\"prompt\":\"a fox\"}'"),
              "501");
    stop_server(pid);
}

}  // namespace
}  // namespace lancet
