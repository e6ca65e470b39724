// Implementation of the server's chat engine.
#include "server/chat_engine.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace lancet::server {

namespace {

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Length of the longest suffix of `text` that is a proper prefix of `stop` (text that may still
// become a stop string, so it is held back).
size_t partial_stop(const std::string& text, const std::string& stop) {
    const size_t most = std::min(text.size(), stop.size() - 1);
    for (size_t k = most; k > 0; --k)
        if (text.compare(text.size() - k, k, stop, 0, k) == 0) return k;
    return 0;
}

}  // namespace

bool ChatJob::next(std::string& piece) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !pieces_.empty() || done_; });
    if (pieces_.empty()) return false;
    piece = std::move(pieces_.front());
    pieces_.pop_front();
    return true;
}

void ChatJob::wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
}

void ChatJob::push(std::string piece) {
    if (piece.empty()) return;
    {
        std::lock_guard<std::mutex> lock(mu_);
        pieces_.push_back(std::move(piece));
    }
    cv_.notify_all();
}

void ChatJob::finish() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        done_ = true;
    }
    cv_.notify_all();
}

ChatEngine::ChatEngine(const ChatEngineOptions& opt)
    : opt_(opt),
      name_(std::filesystem::path(opt.model).lexically_normal().filename().string()),
      ck_(LanceCheckpoint::open(opt.model)),
      tok_(Qwen2Tokenizer::load(opt.model)) {
    if (opt.parallel < 1 || opt.parallel > 64) fail("serve: --parallel must be within [1, 64]");
    if (name_.empty()) name_ = std::filesystem::absolute(opt.model).parent_path().filename();
    DecoderOptions dopt;
    dopt.load_gen = opt.load_gen;  // chat runs the und expert alone; generation needs both
    dopt.bf16_weights = true;      // as Lance, which casts the model to bf16 at load
    dopt.logits_limit = static_cast<int64_t>(tok_.size());
    weights_ = std::make_unique<LanceWeights>(*ck_, dopt);
    // The cores are split among the sessions: each runs its kernels on a pool of its own, so
    // sessions never wait on each other's pool.
    const size_t total = opt.threads ? opt.threads : default_pool().size();
    const size_t per = std::max<size_t>(1, total / static_cast<size_t>(opt.parallel));
    for (int i = 0; i < opt.parallel; ++i) pools_.push_back(std::make_unique<ThreadPool>(per));
    for (int i = 0; i < opt.parallel; ++i)
        workers_.emplace_back([this, i] { worker(static_cast<size_t>(i)); });
}

ChatEngine::~ChatEngine() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
        for (auto& j : queue_) j->cancel();
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    for (auto& j : queue_) {
        j->error = "server shutting down";
        j->finish();
    }
}

std::shared_ptr<ChatJob> ChatEngine::submit(ChatRequest req) {
    auto job = std::make_shared<ChatJob>();
    job->req_ = std::move(req);
    job->submitted_ = now_seconds();
    {
        std::lock_guard<std::mutex> lock(mu_);
        // Waiting requests beyond the free sessions count against the queue bound.
        const size_t free =
            static_cast<size_t>(opt_.parallel) - std::min<size_t>(running_, opt_.parallel);
        if (stop_ || queue_.size() >= opt_.max_queue + free) return nullptr;
        queue_.push_back(job);
    }
    cv_.notify_one();
    return job;
}

size_t ChatEngine::queue_depth() {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
}

void ChatEngine::worker(size_t index) {
    DecoderSession session(*weights_, kernels::OpContext::defaults(pools_[index].get()));
    for (;;) {
        std::shared_ptr<ChatJob> job;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (stop_) return;
            job = std::move(queue_.front());
            queue_.pop_front();
            ++running_;
        }
        run_job(session, *job);
        --running_;
        job->finish();
    }
}

void ChatEngine::run_job(DecoderSession& session, ChatJob& job) {
    const double start = now_seconds();
    job.queue_seconds = start - job.submitted_;
    job.prompt_tokens = job.req_.prompt.size();
    if (job.cancelled()) {
        job.finish_reason = "cancelled";
        return;
    }
    // Stop strings: the text is emitted up to `emitted`; a tail that could still grow into a stop
    // string is held back until it cannot.
    std::string text;
    size_t emitted = 0;
    bool hit_stop = false;
    size_t max_stop = 0;
    for (const auto& s : job.req_.stop) max_stop = std::max(max_stop, s.size());
    StreamDecoder stream(tok_);
    auto on_token = [&](int32_t id) {
        ++job.completion_tokens;
        text += stream.push(id);
        if (!job.req_.stop.empty()) {
            const size_t from = emitted > max_stop ? emitted - max_stop : 0;
            size_t cut = std::string::npos;
            for (const auto& s : job.req_.stop) cut = std::min(cut, text.find(s, from));
            if (cut != std::string::npos) {
                if (cut > emitted) job.push(text.substr(emitted, cut - emitted));
                emitted = text.size();
                hit_stop = true;
                return false;
            }
            size_t hold = 0;
            for (const auto& s : job.req_.stop) hold = std::max(hold, partial_stop(text, s));
            if (text.size() - hold > emitted) {
                job.push(text.substr(emitted, text.size() - hold - emitted));
                emitted = text.size() - hold;
            }
        } else if (text.size() > emitted) {
            job.push(text.substr(emitted));
            emitted = text.size();
        }
        return !job.cancelled();
    };
    try {
        std::vector<float> embeddings;
        const GenerateResult r =
            job.req_.vision
                ? generate_from_batch(session, config(), job.req_.vision(session, embeddings),
                                      job.req_.gen, on_token)
                : generate_text(session, config(), job.req_.prompt, job.req_.gen, on_token);
        if (!hit_stop) {
            text += stream.finish();
            if (text.size() > emitted) job.push(text.substr(emitted));
        }
        job.finish_reason = r.stopped || hit_stop ? "stop" : "length";
        if (job.cancelled()) job.finish_reason = "cancelled";
        job.prefill_seconds = r.prefill_seconds;
        job.decode_seconds = r.decode_seconds;
    } catch (const std::bad_alloc&) {
        job.error = "out of memory";
    } catch (const std::exception& e) {
        job.error = e.what();
    }
}

}  // namespace lancet::server
