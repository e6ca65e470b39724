// The server's chat engine: the weights loaded once and one scheduler thread that decodes up to
// N requests together (continuous batching: each decode step runs every active sequence through
// one pass over the weights, DecoderSession::decode_step), behind a bounded queue. A new request
// is prefilled in bounded chunks between decode steps and then joins the batch; a finished one
// leaves it and a queued one takes its place. Each request streams its text pieces to whoever
// waits on its job.
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
    // prefilled as text. A vision prompt is prefilled in one forward (its ViT block is one
    // bidirectional split), not in chunks.
    std::function<Batch(DecoderSession& session, std::vector<float>& embeddings)> vision;
};

// One request's progress. The worker pushes text; the HTTP side pulls it with next().
class ChatJob {
  public:
    // Waits for the next text piece; false once the job is finished and every piece was taken.
    bool next(std::string& piece);
    // Waits until the job is finished (pieces are kept for next()).
    void wait();
    // Asks the scheduler to drop the request at its next step (a client that went away).
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
    int parallel = 1;       // requests decoding together (sequences in the batch)
    size_t max_queue = 16;  // requests waiting beyond the running ones; more are refused
    size_t threads = 0;     // worker threads of the scheduler's pool (0: the process default)
    // Prompt tokens prefilled per scheduler step: a long prompt is prefilled in chunks of this
    // size with a decode step of the running requests between two chunks, so it stalls them for
    // one chunk's time at most.
    size_t prefill_chunk = 256;
    // lm_head of an INT4 checkpoint (DecoderOptions::lm_head; the CLI passes --lm-head).
    DecoderOptions::LmHead lm_head = DecoderOptions::LmHead::Stored;
    bool load_gen = false;  // also load the gen expert (the server generates images and videos)
};

// Counters of the scheduler's work (for tests, metrics and benchmarks).
struct ChatEngineStats {
    uint64_t decode_steps = 0;    // decode_step calls
    uint64_t decode_rows = 0;     // sequences over all of them (rows / steps = mean batch)
    uint64_t prefill_chunks = 0;  // prefill forward() calls
    size_t max_batch = 0;         // most sequences in one decode step
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
    int parallel() const { return opt_.parallel; }
    ChatEngineStats stats();

  private:
    struct Seq;
    void scheduler();
    // Sets up a request that left the queue (false: it failed or was cancelled, and is finished).
    bool admit(Seq& s);
    // Samples the next token from the sequence's logits and hands its text on; false when the
    // sequence is finished (stop id, stop string, limit, cancel).
    bool advance(Seq& s, const float* logits);
    bool advance_or_throw(Seq& s, const float* logits);
    void finish(Seq& s);

    ChatEngineOptions opt_;
    std::string name_;
    std::unique_ptr<LanceCheckpoint> ck_;
    Qwen2Tokenizer tok_;
    std::unique_ptr<LanceWeights> weights_;
    std::unique_ptr<ThreadPool> pool_;
    std::thread scheduler_;
    std::mutex stats_mu_;
    ChatEngineStats stats_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<ChatJob>> queue_;
    bool stop_ = false;
    std::atomic<size_t> running_{0};
};

}  // namespace lancet::server
