// `lancet serve`: the OpenAI-style HTTP server (server/http_server.h) over one loaded model.
#include <csignal>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "pipeline/vae_codec.h"
#include "server/gen_service.h"
#include "server/http_server.h"

namespace lancet::cli {

namespace {

struct ServeArgs {
    server::ChatEngineOptions engine;
    server::ServerOptions http;
    server::GenServiceOptions gen;
    bool no_generation = false;
};

void run_serve(const ServeArgs& a) {
    if (a.http.port < 0 || a.http.port > 65535) fail("serve: --port must be within [0, 65535]");
    if (!a.http.allow_local_files.empty() &&
        !std::filesystem::is_directory(a.http.allow_local_files))
        fail("serve: --allow-local-files ", a.http.allow_local_files, " is not a folder");
    // Generation routes come alive when the model has its VAE: the weights then hold both
    // experts, loaded once for chat and generation.
    server::ChatEngineOptions eo = a.engine;
    server::GenServiceOptions go = a.gen;
    std::string no_gen_reason = "--no-generation";
    if (!a.no_generation) {
        try {
            go.vae = resolve_vae_path(go.vae.empty() ? a.engine.model : go.vae);
            eo.load_gen = true;
        } catch (const Error& e) {
            no_gen_reason = e.what();
        }
    }
    server::ChatEngine engine(eo);
    log_info("lancet: ", kernels::runtime_description(default_pool()), "; model ", a.engine.model,
             "; up to ", a.engine.parallel, " request(s) decoding together");
    std::unique_ptr<server::GenService> gen;
    server::ServerOptions so = a.http;
    so.max_image_pixels = a.gen.max_input_pixels;
    if (eo.load_gen) {
        go.model = a.engine.model;
        gen = std::make_unique<server::GenService>(engine.checkpoint(), engine.tokenizer(),
                                                   engine.weights(), go);
        so.gen_parallel = static_cast<size_t>(go.parallel);
        so.vision = gen->vision();  // one ViT for image edits and image chat
        so.image_jobs = [g = gen.get()](const nlohmann::json& body, const std::string* upload,
                                        bool edit) { return g->image_job(body, upload, edit); };
        so.video_jobs = [g = gen.get()](const nlohmann::json& body) { return g->video_job(body); };
        log_info("lancet: generation on (VAE ", go.vae, "), ", go.parallel,
                 " job(s) at once, outputs in ", gen->temp_dir());
    } else {
        log_info("lancet: generation off (", no_gen_reason, "); image and video routes answer 501");
    }
    server::HttpServer http(engine, so);
    const int port = http.bind();
    log_info("lancet: serving http://", a.http.host, ":", port, "/ (",
             a.http.api_key.empty() ? "no API key" : "API key required", ")");
    http.listen();
}

}  // namespace

void add_serve(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "serve", "OpenAI-style HTTP server: chat, images, video jobs, metrics, a web page");
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
    cmd->add_option("--allow-local-files", a->http.allow_local_files,
                    "Chat image_url parts may name local files inside this folder (default: none)");
    cmd->add_flag("--no-generation", a->no_generation,
                  "Chat only: do not load the gen expert even when the model has a VAE");
    cmd->add_option("--vae", a->gen.vae, "Wan2.2 VAE (default: the model folder's Wan2.2_VAE.pth)");
    cmd->add_option("--gen-parallel", a->gen.parallel, "Image/video jobs running at once")
        ->check(CLI::Range(1, 16))
        ->capture_default_str();
    cmd->add_option("--max-jobs", a->http.max_video_jobs,
                    "Image/video jobs waiting; more are answered 429")
        ->capture_default_str();
    cmd->add_option("--keep-jobs", a->http.keep_jobs, "Finished video jobs kept for GET")
        ->check(CLI::Range(size_t{1}, size_t{100000}))
        ->capture_default_str();
    cmd->add_option("--keep-bytes", a->http.keep_bytes, "Bytes of finished outputs kept")
        ->capture_default_str();
    cmd->add_option("--max-image-pixels", a->gen.max_pixels,
                    "Largest generated image / video frame (width x height)")
        ->check(CLI::Range(uint64_t{256}, uint64_t{1} << 30))
        ->capture_default_str();
    cmd->add_option("--max-input-pixels", a->gen.max_input_pixels,
                    "Largest uploaded image or video frame, chat images included (width x height)")
        ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30))
        ->capture_default_str();
    cmd->add_option("--max-images", a->gen.max_images, "Most images (n) per image request")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    cmd->add_option("--max-frames", a->gen.max_frames, "Most frames per video")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    cmd->add_option("--max-steps", a->gen.max_steps, "Most sampler steps per request")
        ->check(CLI::Range(1, 1000))
        ->capture_default_str();
    cmd->add_option("--tmp-dir", a->gen.temp_parent,
                    "Where the server's temp folder for uploads and videos goes (default $TMPDIR)");
    cmd->callback([a] {
        if (a->http.api_key.empty())
            if (const char* k = std::getenv("LANCET_API_KEY")) a->http.api_key = k;
        a->engine.lm_head = lm_head_option();
        run_serve(*a);
    });
}

}  // namespace lancet::cli
