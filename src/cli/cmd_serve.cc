// `lancet serve`: the OpenAI-style HTTP server (server/http_server.h) over one loaded model.
#include <csignal>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "server/http_server.h"

namespace lancet::cli {

namespace {

struct ServeArgs {
    server::ChatEngineOptions engine;
    server::ServerOptions http;
};

void run_serve(const ServeArgs& a) {
    if (a.http.port < 0 || a.http.port > 65535) fail("serve: --port must be within [0, 65535]");
    server::ChatEngine engine(a.engine);
    log_info("lancet: ", kernels::runtime_description(default_pool()), "; model ", a.engine.model,
             "; up to ", a.engine.parallel, " request(s) decoding together");
    server::HttpServer http(engine, a.http);
    const int port = http.bind();
    log_info("lancet: serving http://", a.http.host, ":", port, "/ (",
             a.http.api_key.empty() ? "no API key" : "API key required", ")");
    http.listen();
}

}  // namespace

void add_serve(CLI::App& app) {
    auto* cmd = app.add_subcommand("serve", "OpenAI-style HTTP server: chat completions, metrics");
    auto a = std::make_shared<ServeArgs>();
    cmd->add_option("-m,--model", a->engine.model, "Model folder (original or AWQ)")->required();
    cmd->add_option("--host", a->http.host, "Address to listen on (loopback by default)")
        ->capture_default_str();
    cmd->add_option("--port", a->http.port, "TCP port (0: any free one)")->capture_default_str();
    cmd->add_option("--api-key", a->http.api_key,
                    "Require 'Authorization: Bearer KEY' (default: $LANCET_API_KEY, else none)");
    cmd->add_option("--parallel", a->engine.parallel,
                    "Requests decoding together (continuous batching: one pass over the weights "
                    "per token serves all of them)")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    cmd->add_option("--prefill-chunk", a->engine.prefill_chunk,
                    "Prompt tokens prefilled between two decode steps of the running requests")
        ->check(CLI::Range(size_t{1}, size_t{1} << 20))
        ->capture_default_str();
    cmd->add_option("--max-queue", a->engine.max_queue,
                    "Requests waiting for a session; more are answered 429")
        ->capture_default_str();
    cmd->add_option("--max-body", a->http.max_body_bytes, "Largest request body in bytes (413)")
        ->check(CLI::Range(size_t{1}, size_t{1} << 30))
        ->capture_default_str();
    cmd->add_option("--max-prompt-tokens", a->http.max_prompt_tokens,
                    "Longest prompt in tokens (0: the model's context)")
        ->capture_default_str();
    cmd->add_option("--default-max-tokens", a->http.default_max_tokens,
                    "max_tokens when a request names none")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    cmd->add_option("--max-n", a->http.max_n, "Most choices (n) per request")
        ->check(CLI::Range(1, 16))
        ->capture_default_str();
    cmd->add_option("--http-threads", a->http.http_threads, "Connections served at once")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    cmd->callback([a] {
        if (a->http.api_key.empty())
            if (const char* k = std::getenv("LANCET_API_KEY")) a->http.api_key = k;
        a->engine.lm_head = lm_head_option();
        run_serve(*a);
    });
}

}  // namespace lancet::cli
