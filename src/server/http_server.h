// `lancet serve`: OpenAI-style HTTP routes over a ChatEngine (cpp-httplib from Debian).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "server/chat_engine.h"

namespace lancet::server {

struct ServerOptions {
    std::string host = "127.0.0.1";   // loopback unless told otherwise
    int port = 8080;                  // 0: any free port (tests)
    std::string api_key;              // empty: no key required
    size_t max_body_bytes = 1 << 20;  // larger bodies: 413
    size_t max_prompt_tokens = 0;     // 0: the model's context; more: 400
    int default_max_tokens = 256;     // when the request names none
    int max_n = 1;                    // choices per request
    int http_threads = 32;            // connections served at once
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
