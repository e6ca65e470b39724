// The server's chat engine: the weights loaded once, N decoder sessions on N worker threads, a
// bounded queue of requests. Each request streams its text pieces to whoever waits on its job.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/text_generation.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::server {

struct ChatRequest {
    std::vector<int64_t> prompt;    // chat-template ids
    GenerateOptions gen;            // limit, stop ids, sampler
    std::vector<std::string> stop;  // stop strings: the text ends before the first one
    // Optional (a message with an image): builds the prompt as a packed batch whose input
    // embeddings it writes into `embeddings` (an x2t prompt with its ViT block), on the session
    // that prefills it; `prompt` then holds the same ids for counting. Unset: `prompt` is
    // prefilled as text.
    std::function<Batch(DecoderSession& session, std::vector<float>& embeddings)> vision;
};

// One request's progress. The worker pushes text; the HTTP side pulls it with next().
class ChatJob {
  public:
    // Waits for the next text piece; false once the job is finished and every piece was taken.
    bool next(std::string& piece);
    // Waits until the job is finished (pieces are kept for next()).
    void wait();
    // Asks the worker to stop at its next token (a client that went away).
    void cancel() { cancelled_ = true; }
    bool cancelled() const { return cancelled_; }

    // Valid after the job finished.
    std::string error;          // non-empty: the request failed
    std::string finish_reason;  // "stop" or "length"
    size_t prompt_tokens = 0, completion_tokens = 0;
    double queue_seconds = 0, prefill_seconds = 0, decode_seconds = 0;

  private:
    friend class ChatEngine;
    void push(std::string piece);
    void finish();

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::string> pieces_;
    bool done_ = false;
    std::atomic<bool> cancelled_{false};
    ChatRequest req_;
    double submitted_ = 0;
};

struct ChatEngineOptions {
    std::string model;      // model folder (original or AWQ)
    int parallel = 1;       // sessions decoding at once
    size_t max_queue = 16;  // requests waiting beyond the running ones; more are refused
    size_t threads = 0;     // worker threads in all (0: the process default), split among sessions
    bool load_gen = false;  // also load the gen expert (the server generates images and videos)
};

class ChatEngine {
  public:
    explicit ChatEngine(const ChatEngineOptions& opt);
    ~ChatEngine();
    ChatEngine(const ChatEngine&) = delete;
    ChatEngine& operator=(const ChatEngine&) = delete;

    const Qwen2Tokenizer& tokenizer() const { return tok_; }
    const LanceConfig& config() const { return ck_->config(); }
    const std::string& model_name() const { return name_; }
    // The one checkpoint and weights of the server (generation runs sessions over them too).
    const LanceCheckpoint& checkpoint() const { return *ck_; }
    const LanceWeights& weights() const { return *weights_; }

    // Queues a request; nullptr when the queue is full (the caller answers 429).
    std::shared_ptr<ChatJob> submit(ChatRequest req);
    size_t queue_depth();
    size_t running() const { return running_; }
    int parallel() const { return static_cast<int>(workers_.size()); }

  private:
    void worker(size_t index);
    void run_job(DecoderSession& session, ChatJob& job);

    ChatEngineOptions opt_;
    std::string name_;
    std::unique_ptr<LanceCheckpoint> ck_;
    Qwen2Tokenizer tok_;
    std::unique_ptr<LanceWeights> weights_;
    std::vector<std::unique_ptr<ThreadPool>> pools_;
    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<ChatJob>> queue_;
    bool stop_ = false;
    std::atomic<size_t> running_{0};
};

}  // namespace lancet::server
