// `lancet serve`: OpenAI-style HTTP routes over a ChatEngine (cpp-httplib from Debian).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/vit.h"
#include "server/chat_engine.h"
#include "server/job_queue.h"

namespace lancet::server {

struct ServerOptions {
    std::string host = "127.0.0.1";   // loopback unless told otherwise
    int port = 8080;                  // 0: any free port (tests)
    std::string api_key;              // empty: no key required
    size_t max_body_bytes = 1 << 20;  // larger bodies: 413
    size_t max_prompt_tokens = 0;     // 0: the model's context; more: 400
    int default_max_tokens = 256;     // when the request names none
    int max_n = 1;                    // choices per request
    int http_threads = 64;            // connections served at once
    // Video jobs (POST /v1/videos): turns a request body into a runner, throwing lancet::Error
    // for a bad request (400). Unset: the routes answer 501 (no generation pipeline built in).
    std::function<JobRunner(const nlohmann::json& body)> video_jobs;
    // Image requests (POST /v1/images/generations with edit = false, /v1/images/edits with
    // edit = true and `upload` the multipart image): a runner whose result holds one PNG per
    // image in `parts`; lancet::Error for a bad request (400). Unset: 501.
    std::function<JobRunner(const nlohmann::json& body, const std::string* upload, bool edit)>
        image_jobs;
    // Image and video jobs share one bounded queue: `gen_parallel` run at once, at most
    // `max_video_jobs` wait (more: 429 + Retry-After); finished jobs are kept while there are at
    // most `keep_jobs` of them holding at most `keep_bytes`.
    size_t gen_parallel = 1;
    size_t max_video_jobs = 4;
    size_t keep_jobs = 16;
    uint64_t keep_bytes = uint64_t{256} << 20;
    // image_url parts in chat: local paths allowed only inside this folder ("" = none).
    std::string allow_local_files;
    uint64_t max_image_pixels = 16 << 20;  // a chat image, checked from its header
    // The ViT for chat images, shared with the generation side (null: the server loads its own
    // on the first image request).
    std::shared_ptr<SharedVisionTower> vision;
};

// Counters behind GET /metrics (Prometheus text).
struct Metrics;

class HttpServer {
  public:
    HttpServer(ChatEngine& engine, const ServerOptions& opt);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds host:port (port 0: a free one) and returns the port; Error when it cannot.
    int bind();
    // Serves until stop(); call after bind().
    void listen();
    void stop();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace lancet::server
