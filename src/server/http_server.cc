// Implementation of `lancet serve`'s HTTP routes.
#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/image.h"
#include "io/json_file.h"
#include "model/vit.h"
#include "pipeline/preprocess.h"
#include "pipeline/understanding.h"
#include "server/media_input.h"
#include "server/web_page.h"
#include "tokenizer/chat_template.h"

namespace lancet::server {

using nlohmann::json;

namespace {

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// A request the client got wrong: answered with `status` in OpenAI's error shape.
struct HttpError {
    int status;
    std::string message;
    std::string param;
};

const char* error_type(int status) {
    switch (status) {
        case 401:
            return "authentication_error";
        case 404:
            return "not_found_error";
        case 413:
            return "invalid_request_error";
        case 429:
            return "rate_limit_error";
        case 500:
            return "server_error";
        case 503:
            return "server_error";
        default:
            return "invalid_request_error";
    }
}

std::string error_body(int status, const std::string& message, const std::string& param = {}) {
    json e = {{"message", message}, {"type", error_type(status)}, {"code", nullptr}};
    e["param"] = param.empty() ? json(nullptr) : json(param);
    return json{{"error", e}}.dump();
}

void send_error(httplib::Response& res, int status, const std::string& message,
                const std::string& param = {}) {
    res.status = status;
    res.set_content(error_body(status, message, param), "application/json");
}

// Compares in time that depends only on the lengths, not on where the strings first differ.
bool constant_time_equal(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    const size_t n = std::max(a.size(), b.size());
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= static_cast<unsigned char>(x ^ y);
    }
    return diff == 0;
}

// The text of a message's content: a string, or an array of {"type": "text", "text": ...} and
// {"type": "image_url", "image_url": {"url": ...}} parts (the URLs go to `images`).
std::string message_text(const json& content, size_t index, std::vector<std::string>& images) {
    const std::string param = "messages[" + std::to_string(index) + "].content";
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) throw HttpError{400, "content must be a string or an array", param};
    std::string text;
    for (const json& part : content) {
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
            throw HttpError{400, "each content part must be an object with a type", param};
        const std::string type = part["type"];
        if (type == "text") {
            if (!part.contains("text") || !part["text"].is_string())
                throw HttpError{400, "a text part needs a string \"text\"", param};
            text += part["text"].get<std::string>();
        } else if (type == "image_url") {
            const json* u = part.contains("image_url") ? &part["image_url"] : nullptr;
            if (u && u->is_object() && u->contains("url")) u = &(*u)["url"];
            if (!u || !u->is_string() || u->get<std::string>().empty())
                throw HttpError{400, "an image_url part needs {\"image_url\": {\"url\": ...}}",
                                param};
            images.push_back(u->get<std::string>());
        } else {
            throw HttpError{400, "unknown content part type \"" + type + "\"", param};
        }
    }
    return text;
}

double number_field(const json& body, const char* key, double lo, double hi, double def) {
    if (!body.contains(key) || body[key].is_null()) return def;
    const json& v = body[key];
    if (!v.is_number()) throw HttpError{400, std::string(key) + " must be a number", key};
    const double d = v.get<double>();
    if (!(d >= lo && d <= hi))
        throw HttpError{400,
                        std::string(key) + " must be within [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]",
                        key};
    return d;
}

int64_t int_field(const json& body, const char* key, int64_t lo, int64_t hi, int64_t def) {
    if (!body.contains(key) || body[key].is_null()) return def;
    const json& v = body[key];
    if (!v.is_number_integer()) throw HttpError{400, std::string(key) + " must be an integer", key};
    const int64_t i =
        v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX ? INT64_MAX : v.get<int64_t>();
    if (i < lo || i > hi)
        throw HttpError{400,
                        std::string(key) + " must be within [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]",
                        key};
    return i;
}

// Latency histogram buckets (seconds) for /metrics.
constexpr double kBuckets[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
constexpr size_t kNumBuckets = sizeof(kBuckets) / sizeof(kBuckets[0]);

}  // namespace

struct Metrics {
    std::mutex mu;
    std::map<std::pair<std::string, int>, uint64_t> requests;  // (route, status) -> count
    uint64_t prompt_tokens = 0, completion_tokens = 0, cancelled = 0;
    uint64_t latency_count = 0;
    double latency_sum = 0;
    uint64_t latency_bucket[kNumBuckets] = {};
    double decode_seconds = 0;

    void request(const std::string& path, int status) {
        // Known routes by name; everything else as one label, so clients cannot grow the table.
        static const char* known[] = {"/",
                                      "/health",
                                      "/metrics",
                                      "/v1/models",
                                      "/v1/chat/completions",
                                      "/v1/videos",
                                      "/v1/images/generations",
                                      "/v1/images/edits"};
        std::string route = path.rfind("/v1/videos/", 0) == 0 ? "/v1/videos/{id}" : "other";
        for (const char* k : known)
            if (path == k) route = k;
        std::lock_guard<std::mutex> lock(mu);
        ++requests[{route, status}];
    }
    void finished(const ChatJob& job, double seconds) {
        std::lock_guard<std::mutex> lock(mu);
        prompt_tokens += job.prompt_tokens;
        completion_tokens += job.completion_tokens;
        decode_seconds += job.decode_seconds;
        if (job.finish_reason == "cancelled") ++cancelled;
        ++latency_count;
        latency_sum += seconds;
        for (size_t i = 0; i < kNumBuckets; ++i)
            if (seconds <= kBuckets[i]) ++latency_bucket[i];
    }
};

struct HttpServer::Impl {
    ChatEngine& engine;
    ServerOptions opt;
    httplib::Server http;
    Metrics metrics;
    std::atomic<uint64_t> next_id{1};
    std::unique_ptr<JobQueue> videos;  // image and video jobs, when either kind is configured
    std::shared_ptr<SharedVisionTower> vision;  // the ViT for image_url parts
    int port = -1;
    int listen_fd = -1;

    Impl(ChatEngine& e, const ServerOptions& o)
        : engine(e),
          opt(o),
          vision(o.vision ? o.vision : std::make_shared<SharedVisionTower>(e.checkpoint())) {}

    void routes();
    void video_routes();
    void image_routes();
    void image_request(const nlohmann::json& body, const std::string* upload, bool edit,
                       httplib::Response& res);
    void chat(const httplib::Request& req, httplib::Response& res);
    std::string metrics_text();
};

namespace {

struct ParsedChat {
    ChatRequest req;
    bool stream = false, include_usage = false;
    int n = 1;
};

// An image_url's pixels for the ViT: a base64 data URL (PNG, JPEG or WebP), or a local file
// inside --allow-local-files; the pixel limit is checked from the header before decoding.
PixelTensor chat_image(const std::string& url, const ServerOptions& opt, const std::string& param) {
    ImageReadOptions ro;
    ro.max_pixels = opt.max_image_pixels;
    try {
        ImageRGB8 img;
        if (url.rfind("data:", 0) == 0) {
            std::string mime;
            const std::string bytes = decode_data_url(url, "image_url", &mime);
            if (mime != "image/png" && mime != "image/jpeg" && mime != "image/webp" &&
                mime != "image/jpg")
                fail("image_url: the data URL's type must be image/png, image/jpeg or image/webp");
            img = decode_image({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()},
                               "image_url", ro);
        } else if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) {
            fail("image_url: this server does not fetch URLs; send a data URL");
        } else {
            img = read_image(confined_local_file(url, opt.allow_local_files, "image_url"), ro);
        }
        return preprocess_image(img, x2t_default_preset(false), VisionStream::Vit).pixels;
    } catch (const Error& e) {
        throw HttpError{400, e.what(), param};
    }
}

ParsedChat parse_chat(const std::string& body_text, const ChatEngine& engine,
                      const ServerOptions& opt, SharedVisionTower& vision) {
    json body;
    try {
        body = parse_strict_json(body_text, "request body");
    } catch (const Error& e) {
        throw HttpError{400, e.what(), ""};
    }
    if (!body.is_object()) throw HttpError{400, "the request body must be a JSON object", ""};
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
        throw HttpError{400, "messages must be a non-empty array", "messages"};

    std::string system = kDefaultSystemPrompt;
    bool have_system = false;
    std::vector<ChatMessage> messages;
    std::vector<std::string> images;
    std::string image_param;
    const json& msgs = body["messages"];
    for (size_t i = 0; i < msgs.size(); ++i) {
        const json& m = msgs[i];
        const std::string param = "messages[" + std::to_string(i) + "]";
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
            !m.contains("content"))
            throw HttpError{400, "each message needs a string role and a content", param};
        const std::string role = m["role"];
        const size_t had = images.size();
        const std::string text = message_text(m["content"], i, images);
        if (images.size() > had) {
            image_param = param + ".content";
            if (role != "user") throw HttpError{400, "images go in a user message", image_param};
        }
        if (role == "system" || role == "developer") {
            if (!messages.empty())
                throw HttpError{400, "a system message must come before the others", param};
            system = have_system ? system + "\n" + text : text;
            have_system = true;
        } else if (role == "user" || role == "assistant") {
            messages.push_back({role, text});
        } else {
            throw HttpError{400, "unknown role \"" + role + "\"", param + ".role"};
        }
    }
    if (messages.empty()) throw HttpError{400, "messages hold no user message", "messages"};

    ParsedChat p;
    const int64_t ctx = engine.config().max_position_embeddings;
    std::vector<int32_t> ids;
    if (images.empty()) {
        // Untrusted text stays text: special-token strings in any message are plain characters.
        ids = chat_ids(engine.tokenizer(), system, messages, false);
    } else {
        // Lance's x2t layout (spec §2.4): system, one user turn holding one image (the ViT block,
        // bidirectional) and the question, the assistant's turn. Other shapes have no layout in
        // Lance, so they are refused rather than guessed.
        if (images.size() != 1)
            throw HttpError{400, "one image per request (Lance's x2t layout holds one)",
                            image_param};
        if (messages.size() != 1 || messages[0].role != "user")
            throw HttpError{400,
                            "a request with an image holds one user message (with the image and "
                            "the question) and optionally a system message",
                            "messages"};
        if (!engine.checkpoint().has_vit())
            throw HttpError{400, "this model has no ViT (Qwen2.5-VL-ViT), so it cannot see images",
                            image_param};
        if (!have_system) system = x2t_default_system(false);
        auto px = std::make_shared<const PixelTensor>(chat_image(images[0], opt, image_param));
        const VitConfig& vc = engine.config().vision;
        VitPlan plan;
        try {
            plan = vit_plan(vc, px->T, px->H, px->W, "image_url");
        } catch (const Error& e) {
            throw HttpError{400, e.what(), image_param};
        }
        const X2tPrompt xp =
            build_x2t_prompt(engine.config(), engine.tokenizer(), system, messages[0].content,
                             {plan.gt, plan.gh, plan.gw}, vc.spatial_merge_size);
        ids.assign(xp.ids.begin(), xp.ids.end());
        const std::string question = messages[0].content;
        const Qwen2Tokenizer& tok = engine.tokenizer();
        p.req.vision = [px, system, question, &tok, &vision](DecoderSession& session,
                                                             std::vector<float>& emb) {
            // The context was checked when the request arrived (new_tokens 0 here).
            return vision.with([&](VisionTower& t) {
                return x2t_prompt_batch(session, t, tok, *px, system, question, 0, emb);
            });
        };
    }
    const size_t max_prompt = opt.max_prompt_tokens ? opt.max_prompt_tokens : ctx;
    if (ids.size() >= max_prompt || static_cast<int64_t>(ids.size()) >= ctx)
        throw HttpError{400,
                        "the prompt has " + std::to_string(ids.size()) + " tokens; the limit is " +
                            std::to_string(std::min<int64_t>(max_prompt, ctx) - 1),
                        "messages"};
    p.req.prompt.assign(ids.begin(), ids.end());
    const int64_t room = ctx - static_cast<int64_t>(ids.size());
    int64_t max_tokens = int_field(body, "max_completion_tokens", 1, INT64_MAX,
                                   std::min<int64_t>(opt.default_max_tokens, room));
    max_tokens = int_field(body, "max_tokens", 1, INT64_MAX, max_tokens);
    if (max_tokens > room)
        throw HttpError{400,
                        "max_tokens " + std::to_string(max_tokens) + " plus the prompt's " +
                            std::to_string(ids.size()) + " tokens exceed the context of " +
                            std::to_string(ctx),
                        "max_tokens"};
    p.req.gen.max_new_tokens = static_cast<int>(max_tokens);
    p.req.gen.stop_ids = {engine.tokenizer().special_id("<|im_end|>")};
    p.req.gen.sampler.temperature = static_cast<float>(number_field(body, "temperature", 0, 2, 0));
    p.req.gen.sampler.top_p = static_cast<float>(number_field(body, "top_p", 1e-6, 1, 1));
    p.req.gen.sampler.seed = static_cast<uint64_t>(int_field(body, "seed", 0, INT64_MAX, 42));
    p.n = static_cast<int>(int_field(body, "n", 1, opt.max_n, 1));
    if (body.contains("stop") && !body["stop"].is_null()) {
        const json& s = body["stop"];
        auto add = [&](const json& v) {
            if (!v.is_string() || v.get<std::string>().empty())
                throw HttpError{400, "stop must be a non-empty string or an array of them", "stop"};
            p.req.stop.push_back(v.get<std::string>());
        };
        if (s.is_array()) {
            if (s.size() > 4) throw HttpError{400, "at most 4 stop strings", "stop"};
            for (const json& v : s) add(v);
        } else {
            add(s);
        }
    }
    if (body.contains("stream") && !body["stream"].is_null()) {
        if (!body["stream"].is_boolean())
            throw HttpError{400, "stream must be a boolean", "stream"};
        p.stream = body["stream"];
    }
    if (p.stream && p.n > 1) throw HttpError{400, "stream supports n = 1 only", "n"};
    if (body.contains("stream_options") && body["stream_options"].is_object()) {
        const json& so = body["stream_options"];
        p.include_usage = so.contains("include_usage") && so["include_usage"].is_boolean() &&
                          so["include_usage"].get<bool>();
    }
    return p;
}

}  // namespace

void HttpServer::Impl::chat(const httplib::Request& req, httplib::Response& res) {
    const double start = now_seconds();
    ParsedChat p = parse_chat(req.body, engine, opt, *vision);
    const std::string id = "chatcmpl-" + std::to_string(next_id++);
    const int64_t created = static_cast<int64_t>(std::time(nullptr));

    // One job per choice. Choices run one after another, so a request holds one session at most
    // and n > 1 cannot fill the queue by itself.
    auto submit = [&](int i) {
        ChatRequest r = p.req;
        r.gen.sampler.seed += static_cast<uint64_t>(i);
        auto job = engine.submit(std::move(r));
        if (!job) {
            res.set_header("Retry-After", "1");
            throw HttpError{429, "the server's queue is full; retry later", ""};
        }
        return job;
    };

    if (!p.stream) {
        json choices = json::array();
        size_t completion = 0, prompt = 0;
        for (int i = 0; i < p.n; ++i) {
            auto job = submit(i);
            std::string text, piece;
            while (job->next(piece)) text += piece;
            job->wait();
            metrics.finished(*job, now_seconds() - start);
            if (!job->error.empty()) throw HttpError{500, "generation failed: " + job->error, ""};
            completion += job->completion_tokens;
            prompt = job->prompt_tokens;
            choices.push_back({{"index", i},
                               {"message", {{"role", "assistant"}, {"content", text}}},
                               {"finish_reason", job->finish_reason}});
        }
        json out = {{"id", id},
                    {"object", "chat.completion"},
                    {"created", created},
                    {"model", engine.model_name()},
                    {"choices", choices},
                    {"usage",
                     {{"prompt_tokens", prompt},
                      {"completion_tokens", completion},
                      {"total_tokens", prompt + completion}}}};
        res.set_content(out.dump(), "application/json");
        return;
    }

    // Server-sent events: a role chunk, content chunks, a finish chunk, [DONE]. A failed write
    // (the client went away) cancels the job; so does a response the server abandons.
    auto job = submit(0);
    auto chunk = [id, created, model = engine.model_name()](const json& delta, const json& finish) {
        json c = {{"id", id},
                  {"object", "chat.completion.chunk"},
                  {"created", created},
                  {"model", model},
                  {"choices",
                   json::array({{{"index", 0}, {"delta", delta}, {"finish_reason", finish}}})}};
        return "data: " + c.dump() + "\n\n";
    };
    auto state = std::make_shared<int>(0);  // 0: role not sent, 1: streaming, 2: done
    const bool include_usage = p.include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, chunk, state, include_usage, start](size_t, httplib::DataSink& sink) {
            auto write = [&](const std::string& s) {
                if (sink.write(s.data(), s.size())) return true;
                job->cancel();
                return false;
            };
            if (*state == 0) {
                *state = 1;
                return write(chunk({{"role", "assistant"}, {"content", ""}}, nullptr));
            }
            std::string piece;
            if (job->next(piece)) return write(chunk({{"content", piece}}, nullptr));
            job->wait();
            if (!job->error.empty()) {
                write("data: " + error_body(500, "generation failed: " + job->error) + "\n\n");
            } else {
                if (!write(chunk(json::object(), job->finish_reason))) return false;
                if (include_usage) {
                    json u = {{"id", "usage"},
                              {"object", "chat.completion.chunk"},
                              {"choices", json::array()},
                              {"usage",
                               {{"prompt_tokens", job->prompt_tokens},
                                {"completion_tokens", job->completion_tokens},
                                {"total_tokens", job->prompt_tokens + job->completion_tokens}}}};
                    if (!write("data: " + u.dump() + "\n\n")) return false;
                }
            }
            if (!write("data: [DONE]\n\n")) return false;
            sink.done();
            return true;
        },
        [this, job, start](bool success) {
            // Called once the response ends either way: count the job when it has stopped.
            if (!success) job->cancel();
            job->wait();
            metrics.finished(*job, now_seconds() - start);
        });
}

std::string HttpServer::Impl::metrics_text() {
    std::string s;
    char line[256];
    std::lock_guard<std::mutex> lock(metrics.mu);
    s += "# HELP lancet_requests_total HTTP requests by route and status.\n";
    s += "# TYPE lancet_requests_total counter\n";
    for (const auto& [k, v] : metrics.requests) {
        std::snprintf(line, sizeof line, "lancet_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                      k.first.c_str(), k.second, static_cast<unsigned long long>(v));
        s += line;
    }
    auto counter = [&](const char* name, const char* help, double v) {
        std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", name, help,
                      name, name, v);
        s += line;
    };
    auto gauge = [&](const char* name, const char* help, double v) {
        std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help,
                      name, name, v);
        s += line;
    };
    counter("lancet_prompt_tokens_total", "Prompt tokens of finished chat requests.",
            static_cast<double>(metrics.prompt_tokens));
    counter("lancet_completion_tokens_total", "Generated tokens.",
            static_cast<double>(metrics.completion_tokens));
    counter("lancet_decode_seconds_total", "Seconds spent decoding.", metrics.decode_seconds);
    counter("lancet_cancelled_total", "Chat requests cancelled (client gone).",
            static_cast<double>(metrics.cancelled));
    gauge("lancet_queue_depth", "Chat requests waiting for a session.",
          static_cast<double>(engine.queue_depth()));
    gauge("lancet_running", "Chat requests decoding now.", static_cast<double>(engine.running()));
    gauge("lancet_sessions", "Decoder sessions (--parallel).", engine.parallel());
    gauge("lancet_video_queue_depth", "Image and video jobs waiting.",
          videos ? static_cast<double>(videos->pending()) : 0.0);
    gauge("lancet_video_running", "Image and video jobs running.",
          videos ? static_cast<double>(videos->running()) : 0.0);
    counter("lancet_gen_steps_total", "Sampler steps of image and video jobs.",
            videos ? static_cast<double>(videos->steps_done()) : 0.0);
    s += "# HELP lancet_request_seconds Chat request latency.\n";
    s += "# TYPE lancet_request_seconds histogram\n";
    for (size_t i = 0; i < kNumBuckets; ++i) {
        std::snprintf(line, sizeof line, "lancet_request_seconds_bucket{le=\"%g\"} %llu\n",
                      kBuckets[i], static_cast<unsigned long long>(metrics.latency_bucket[i]));
        s += line;
    }
    std::snprintf(line, sizeof line,
                  "lancet_request_seconds_bucket{le=\"+Inf\"} %llu\n"
                  "lancet_request_seconds_sum %.17g\nlancet_request_seconds_count %llu\n",
                  static_cast<unsigned long long>(metrics.latency_count), metrics.latency_sum,
                  static_cast<unsigned long long>(metrics.latency_count));
    s += line;
    return s;
}

namespace {

json video_json(const JobStatus& st) {
    json j = {{"id", st.id},
              {"object", "video"},
              {"status", st.state},
              {"created_at", st.created},
              {"step", st.step},
              {"steps", st.steps},
              {"progress", st.steps > 0 ? 100 * st.step / st.steps : 0}};
    if (!st.error.empty()) j["error"] = {{"message", st.error}};
    return j;
}

}  // namespace

void HttpServer::Impl::video_routes() {
    if (opt.video_jobs || opt.image_jobs)
        videos = std::make_unique<JobQueue>(opt.gen_parallel, opt.max_video_jobs, opt.keep_jobs,
                                            opt.keep_bytes);
    http.Post("/v1/videos", [this](const httplib::Request& req, httplib::Response& res) {
        if (!opt.video_jobs)
            return send_error(res, 501, "video generation is not available in this server");
        json body;
        JobRunner run;
        try {
            body = parse_strict_json(req.body, "request body");
            if (!body.is_object()) fail("the request body must be a JSON object");
            run = opt.video_jobs(body);
        } catch (const Error& e) {
            return send_error(res, 400, e.what());
        }
        const auto id = videos->submit("video", std::move(run));
        if (!id) {
            res.set_header("Retry-After", "10");
            return send_error(res, 429, "the video queue is full; retry later");
        }
        res.set_content(video_json(*videos->status(*id)).dump(), "application/json");
    });
    auto find = [this](const httplib::Request& req, httplib::Response& res) {
        std::optional<JobStatus> st;
        if (videos) st = videos->status(req.matches[1]);
        if (!st) send_error(res, 404, "no video job \"" + std::string(req.matches[1]) + "\"");
        return st;
    };
    http.Get(R"(/v1/videos/([A-Za-z0-9_]+))",
             [find](const httplib::Request& req, httplib::Response& res) {
                 if (auto st = find(req, res))
                     res.set_content(video_json(*st).dump(), "application/json");
             });
    http.Get(R"(/v1/videos/([A-Za-z0-9_]+)/content)", [this, find](const httplib::Request& req,
                                                                   httplib::Response& res) {
        const auto st = find(req, res);
        if (!st) return;
        const auto r = videos->result(st->id);
        if (!r)
            return send_error(res, 409,
                              "video job " + st->id + " is " + st->state + ", not succeeded");
        if (!r->file) return res.set_content(r->bytes, r->content_type.c_str());
        // Streamed from the temp folder; the result (and so the file) stays alive until
        // the response is done even if the store evicts the job meanwhile.
        auto in = std::make_shared<std::ifstream>(r->file->path(), std::ios::binary);
        if (!*in) return send_error(res, 500, "the video file is gone");
        res.set_content_provider(r->file_bytes, r->content_type.c_str(),
                                 [r, in](size_t offset, size_t length, httplib::DataSink& sink) {
                                     std::vector<char> buf(std::min<size_t>(length, 1 << 16));
                                     in->seekg(static_cast<std::streamoff>(offset));
                                     in->read(buf.data(), static_cast<std::streamsize>(buf.size()));
                                     const auto got = in->gcount();
                                     if (got <= 0) return false;
                                     return sink.write(buf.data(), static_cast<size_t>(got));
                                 });
    });
    http.Delete(R"(/v1/videos/([A-Za-z0-9_]+))", [this, find](const httplib::Request& req,
                                                              httplib::Response& res) {
        if (!find(req, res)) return;
        videos->cancel(req.matches[1]);
        res.set_content(video_json(*videos->status(req.matches[1])).dump(), "application/json");
    });
}

void HttpServer::Impl::image_request(const json& body, const std::string* upload, bool edit,
                                     httplib::Response& res) {
    if (!opt.image_jobs)
        return send_error(res, 501, "image generation is not available in this server");
    JobRunner run;
    try {
        if (!body.is_object()) fail("the request body must be a JSON object");
        run = opt.image_jobs(body, upload, edit);
    } catch (const Error& e) {
        return send_error(res, 400, e.what());
    }
    const auto id = videos->submit(edit ? "image_edit" : "image", std::move(run));
    if (!id) {
        res.set_header("Retry-After", "10");
        return send_error(res, 429, "the generation queue is full; retry later");
    }
    // The client waits for its images (they come back inline); the job is dropped afterwards.
    std::shared_ptr<const JobResult> r;
    const auto st = videos->wait(*id, &r);
    videos->forget(*id);
    if (!st || !r) {
        const std::string why = st ? st->state + (st->error.empty() ? "" : ": " + st->error) : "";
        return send_error(res, 500, "image generation failed: " + why);
    }
    json data = json::array();
    for (const std::string& png : r->parts) data.push_back({{"b64_json", base64_encode(png)}});
    res.set_content(
        json{{"created", static_cast<int64_t>(std::time(nullptr))}, {"data", data}}.dump(),
        "application/json");
}

void HttpServer::Impl::image_routes() {
    http.Post("/v1/images/generations",
              [this](const httplib::Request& req, httplib::Response& res) {
                  json body;
                  try {
                      body = parse_strict_json(req.body, "request body");
                  } catch (const Error& e) {
                      return send_error(res, 400, e.what());
                  }
                  image_request(body, nullptr, false, res);
              });
    http.Post("/v1/images/edits", [this](const httplib::Request& req, httplib::Response& res) {
        if (!req.is_multipart_form_data())
            return send_error(
                res, 400, "images/edits takes multipart/form-data (an image file and a prompt)");
        // The text fields as JSON values: numbers where the field is numeric, so the checks are
        // those of the JSON routes.
        json body = json::object();
        std::string image;
        bool have_image = false;
        for (const auto& [name, f] : req.files) {
            if (name == "image" || name == "image[]") {
                if (have_image) return send_error(res, 400, "one image per edit", "image");
                image = f.content;
                have_image = true;
                continue;
            }
            json v = f.content;
            if (name == "n" || name == "seed" || name == "steps") {
                try {
                    size_t used = 0;
                    const long long i = std::stoll(f.content, &used);
                    if (used == f.content.size()) v = i;
                } catch (const std::exception&) {
                }
            } else if (name == "cfg" || name == "shift") {
                try {
                    size_t used = 0;
                    const double d = std::stod(f.content, &used);
                    if (used == f.content.size()) v = d;
                } catch (const std::exception&) {
                }
            }
            body[name] = v;
        }
        if (!have_image) return send_error(res, 400, "an image file field is required", "image");
        image_request(body, &image, true, res);
    });
}

void HttpServer::Impl::routes() {
    http.set_payload_max_length(opt.max_body_bytes);
    // Every answer in OpenAI's error shape, including the library's own (404, 413, 400).
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
        if (res.body.empty() || res.get_header_value("Content-Type") != "application/json") {
            std::string msg = "error";
            if (res.status == 404) msg = "no route " + req.method + " " + req.path;
            if (res.status == 413)
                msg = "the request body exceeds " + std::to_string(opt.max_body_bytes) + " bytes";
            // The library caps form-encoded bodies far lower (curl -d sends that type).
            if (res.status == 413 && req.get_header_value("Content-Type")
                                             .rfind("application/x-www-form-urlencoded", 0) == 0)
                msg = "a form-encoded body is limited to " +
                      std::to_string(CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH) +
                      " bytes; send the JSON with Content-Type: application/json";
            if (res.status == 400) msg = "malformed HTTP request";
            send_error(res, res.status, msg);
        }
    });
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string msg = "internal error";
            try {
                std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                msg = std::string("internal error: ") + e.what();
            } catch (...) {
            }
            send_error(res, 500, msg);
        });
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        if (opt.api_key.empty() || req.path == "/health" || req.path == "/") {
            return httplib::Server::HandlerResponse::Unhandled;
        }
        const std::string auth = req.get_header_value("Authorization");
        const std::string expect = "Bearer " + opt.api_key;
        if (!constant_time_equal(auth, expect)) {
            send_error(res, 401, "a valid API key is required (Authorization: Bearer <key>)");
            metrics.request(req.path, 401);
            return httplib::Server::HandlerResponse::Handled;
        }
        return httplib::Server::HandlerResponse::Unhandled;
    });
    // Counted when the response is about to be written (not in the logger, which runs after it is
    // sent), so a client that has its answer always sees its request in /metrics.
    http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        if (res.status != 401) metrics.request(req.path, res.status);
    });

    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
        json h = {{"status", "ok"},
                  {"sessions", engine.parallel()},
                  {"running", engine.running()},
                  {"queue_depth", engine.queue_depth()}};
        res.set_content(h.dump(), "application/json");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
        json m = {{"object", "list"},
                  {"data", json::array({{{"id", engine.model_name()},
                                         {"object", "model"},
                                         {"created", 0},
                                         {"owned_by", "lancet"}}})}};
        res.set_content(m.dump(), "application/json");
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(kWebPage, "text/html; charset=utf-8");
    });
    video_routes();
    image_routes();
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
        try {
            chat(req, res);
        } catch (const HttpError& e) {
            send_error(res, e.status, e.message, e.param);
        } catch (const Error& e) {
            send_error(res, 400, e.what());
        }
    });
}

HttpServer::HttpServer(ChatEngine& engine, const ServerOptions& opt)
    : impl_(std::make_unique<Impl>(engine, opt)) {
    impl_->http.new_task_queue = [n = opt.http_threads] {
        return new httplib::ThreadPool(static_cast<size_t>(n));
    };
    impl_->routes();
    // The library listens with a backlog of 5: a burst of clients connecting at once overflows
    // it and the kernel drops their SYNs (the client retries after a second). The listening
    // socket is kept here so bind() can raise the backlog (a second listen() on Linux).
    impl_->http.set_socket_options([impl = impl_.get()](int sock) {
        httplib::default_socket_options(sock);
        impl->listen_fd = sock;
    });
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
    const std::string& host = impl_->opt.host;
    const int port = impl_->opt.port;
    impl_->port = port == 0 ? impl_->http.bind_to_any_port(host)
                            : (impl_->http.bind_to_port(host, port) ? port : -1);
    if (impl_->port < 0) fail("serve: cannot listen on ", host, ":", port);
    if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, 1024);
    return impl_->port;
}

void HttpServer::listen() { impl_->http.listen_after_bind(); }

void HttpServer::stop() { impl_->http.stop(); }

}  // namespace lancet::server
