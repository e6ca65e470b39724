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

// One request in the scheduler: its cache, sampler and text state.
struct ChatEngine::Seq {
    std::shared_ptr<ChatJob> job;
    KvCache cache;
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<StreamDecoder> stream;
    size_t prefilled = 0;        // prompt tokens in the cache
    int64_t next_pos = 0;        // the text position after the prompt (M-RoPE of a ViT block)
    int64_t pending_id = -1;     // the token the next decode step feeds (-1: none)
    RopePosition pending_pos{};  // and its position
    int generated = 0;           // tokens sampled, stop ids excluded
    bool stopped = false, hit_stop = false;
    // Stop strings: the text is emitted up to `emitted`; a tail that could still grow into a stop
    // string is held back until it cannot.
    std::string text;
    size_t emitted = 0, max_stop = 0;
    double start = 0, decode_start = 0;
};

ChatEngine::ChatEngine(const ChatEngineOptions& opt)
    : opt_(opt),
      name_(std::filesystem::path(opt.model).lexically_normal().filename().string()),
      ck_(LanceCheckpoint::open(opt.model)),
      tok_(Qwen2Tokenizer::load(opt.model)) {
    if (opt.parallel < 1 || opt.parallel > 64) fail("serve: --parallel must be within [1, 64]");
    if (opt.prefill_chunk < 1) fail("serve: --prefill-chunk must be at least 1");
    if (name_.empty()) name_ = std::filesystem::absolute(opt.model).parent_path().filename();
    DecoderOptions dopt;
    dopt.load_gen = opt.load_gen;  // chat runs the und expert alone; generation needs both
    dopt.bf16_weights = true;      // as Lance, which casts the model to bf16 at load
    dopt.logits_limit = static_cast<int64_t>(tok_.size());
    dopt.lm_head = opt.lm_head;
    weights_ = std::make_unique<LanceWeights>(*ck_, dopt);
    // One pool with every core: the batch shares one pass over the weights, so there is nothing
    // left to split the cores for.
    pool_ = std::make_unique<ThreadPool>(opt.threads ? opt.threads : default_pool().size());
    scheduler_ = std::thread([this] { scheduler(); });
}

ChatEngine::~ChatEngine() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
        for (auto& j : queue_) j->cancel();
    }
    cv_.notify_all();
    scheduler_.join();
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
        // Waiting requests beyond the free places in the batch count against the queue bound.
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

ChatEngineStats ChatEngine::stats() {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
}

bool ChatEngine::admit(Seq& s) {
    ChatJob& job = *s.job;
    s.start = now_seconds();
    job.queue_seconds = s.start - job.submitted_;
    job.prompt_tokens = job.req_.prompt.size();
    if (job.cancelled()) {
        job.finish_reason = "cancelled";
        return false;
    }
    try {
        const auto& prompt = job.req_.prompt;
        const int max_new = job.req_.gen.max_new_tokens;
        if (prompt.empty()) fail("generate: empty prompt");
        const size_t limit = static_cast<size_t>(config().max_position_embeddings);
        if (max_new < 0 || prompt.size() + static_cast<size_t>(max_new) > limit)
            fail("prompt of ", prompt.size(), " tokens plus ", max_new,
                 " new tokens exceeds the model context of ", limit, " tokens");
        s.cache = weights_->make_cache(prompt.size() + static_cast<size_t>(max_new));
        s.sampler = std::make_unique<Sampler>(job.req_.gen.sampler);
        s.stream = std::make_unique<StreamDecoder>(tok_);
        for (const auto& st : job.req_.stop) s.max_stop = std::max(s.max_stop, st.size());
    } catch (const std::bad_alloc&) {
        job.error = "out of memory";
        return false;
    } catch (const std::exception& e) {
        job.error = e.what();
        return false;
    }
    return true;
}

bool ChatEngine::advance(Seq& s, const float* logits) {
    // Whatever goes wrong here ends this request alone (the scheduler thread must go on).
    try {
        return advance_or_throw(s, logits);
    } catch (const std::bad_alloc&) {
        s.job->error = "out of memory";
    } catch (const std::exception& e) {
        s.job->error = e.what();
    }
    return false;
}

bool ChatEngine::advance_or_throw(Seq& s, const float* logits) {
    ChatJob& job = *s.job;
    const auto& req = job.req_;
    if (s.generated >= req.gen.max_new_tokens) return false;
    const int32_t id = s.sampler->sample(logits, config().vocab_size);
    if (std::find(req.gen.stop_ids.begin(), req.gen.stop_ids.end(), id) != req.gen.stop_ids.end()) {
        s.stopped = true;
        return false;
    }
    ++s.generated;
    ++job.completion_tokens;
    s.text += s.stream->push(id);
    if (!req.stop.empty()) {
        const size_t from = s.emitted > s.max_stop ? s.emitted - s.max_stop : 0;
        size_t cut = std::string::npos;
        for (const auto& st : req.stop) cut = std::min(cut, s.text.find(st, from));
        if (cut != std::string::npos) {
            if (cut > s.emitted) job.push(s.text.substr(s.emitted, cut - s.emitted));
            s.emitted = s.text.size();
            s.hit_stop = true;
            return false;
        }
        size_t hold = 0;
        for (const auto& st : req.stop) hold = std::max(hold, partial_stop(s.text, st));
        if (s.text.size() - hold > s.emitted) {
            job.push(s.text.substr(s.emitted, s.text.size() - hold - s.emitted));
            s.emitted = s.text.size() - hold;
        }
    } else if (s.text.size() > s.emitted) {
        job.push(s.text.substr(s.emitted));
        s.emitted = s.text.size();
    }
    if (job.cancelled() || s.generated == req.gen.max_new_tokens) return false;
    // Text positions are equal on the three M-RoPE axes: each new token continues at the next one
    // after the prompt (as generate_text / generate_from_batch).
    const int64_t p = s.next_pos + s.generated - 1;
    s.pending_id = id;
    s.pending_pos = {p, p, p};
    return true;
}

void ChatEngine::finish(Seq& s) {
    ChatJob& job = *s.job;
    if (job.error.empty() && s.stream) {
        try {
            if (!s.hit_stop) {
                s.text += s.stream->finish();
                if (s.text.size() > s.emitted) job.push(s.text.substr(s.emitted));
            }
        } catch (const std::exception& e) {
            job.error = e.what();
        }
        job.finish_reason = s.stopped || s.hit_stop ? "stop" : "length";
    }
    if (job.cancelled()) job.finish_reason = "cancelled";
    if (s.decode_start > 0) job.decode_seconds = now_seconds() - s.decode_start;
    s.cache = KvCache();  // the memory goes back before the next request is admitted
    job.finish();
}

void ChatEngine::scheduler() {
    DecoderSession session(*weights_, kernels::OpContext::defaults(pool_.get()));
    const size_t V = static_cast<size_t>(config().vocab_size);
    std::vector<std::unique_ptr<Seq>> active;
    std::vector<DecodeItem> items;
    std::vector<Seq*> in_step;
    Outputs out;
    ForwardOptions fo;
    fo.logits = LogitRows::Last;
    fo.velocity = false;
    // The place in the batch is free before the job reports done: a client that sends its next
    // request at once must find it free.
    auto retire = [&](size_t i) {
        --running_;
        finish(*active[i]);
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(i));
    };
    for (;;) {
        std::vector<std::shared_ptr<ChatJob>> joined;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !active.empty(); });
            if (stop_) break;
            while (active.size() + joined.size() < static_cast<size_t>(opt_.parallel) &&
                   !queue_.empty()) {
                joined.push_back(std::move(queue_.front()));
                queue_.pop_front();
                ++running_;
            }
        }
        for (auto& job : joined) {
            auto s = std::make_unique<Seq>();
            s->job = std::move(job);
            active.push_back(std::move(s));
            if (!admit(*active.back())) retire(active.size() - 1);
        }
        // A client that went away: its sequence leaves the batch now.
        for (size_t i = active.size(); i-- > 0;)
            if (active[i]->job->cancelled()) retire(i);

        // One prefill chunk, for the oldest request still prefilling: a long prompt stalls the
        // running requests by one chunk per token at most.
        for (size_t i = 0; i < active.size(); ++i) {
            Seq& s = *active[i];
            const auto& prompt = s.job->req_.prompt;
            if (s.prefilled == prompt.size()) continue;
            try {
                const double t0 = now_seconds();
                size_t n = 0;
                if (s.job->req_.vision) {
                    // The whole x2t prompt at once (ViT included): the ViT block is one
                    // bidirectional split.
                    std::vector<float> embeddings;
                    Batch b = s.job->req_.vision(session, embeddings);
                    b.embeddings = embeddings.data();
                    if (b.size() != prompt.size())
                        fail("serve: the vision prompt has ", b.size(), " tokens, counted ",
                             prompt.size());
                    n = b.size();
                    s.next_pos = next_text_position(b.positions);
                    session.forward(b, &s.cache, /*append=*/true, out, fo);
                } else {
                    n = std::min(opt_.prefill_chunk, prompt.size() - s.prefilled);
                    Batch b;
                    b.token_ids.assign(
                        prompt.begin() + static_cast<std::ptrdiff_t>(s.prefilled),
                        prompt.begin() + static_cast<std::ptrdiff_t>(s.prefilled + n));
                    b.positions.resize(n);
                    for (size_t j = 0; j < n; ++j) {
                        const auto p = static_cast<int64_t>(s.prefilled + j);
                        b.positions[j] = {p, p, p};
                    }
                    s.next_pos = static_cast<int64_t>(s.prefilled + n);
                    session.forward(b, &s.cache, /*append=*/true, out, fo);
                }
                s.job->prefill_seconds += now_seconds() - t0;
                s.prefilled += n;
                {
                    std::lock_guard<std::mutex> lock(stats_mu_);
                    ++stats_.prefill_chunks;
                }
                if (s.prefilled == prompt.size()) {
                    s.decode_start = now_seconds();
                    if (!advance(s, out.logits.data())) retire(i);
                }
            } catch (const std::bad_alloc&) {
                s.job->error = "out of memory";
                retire(i);
            } catch (const std::exception& e) {
                s.job->error = e.what();
                retire(i);
            }
            break;
        }

        // One decode step of every sequence that has a token to feed.
        items.clear();
        in_step.clear();
        for (auto& s : active)
            if (s->pending_id >= 0) {
                items.push_back({std::span<const int64_t>(&s->pending_id, 1),
                                 std::span<const RopePosition>(&s->pending_pos, 1), &s->cache});
                in_step.push_back(s.get());
            }
        if (items.empty()) continue;
        try {
            session.decode_step(items, out);
        } catch (const std::exception& e) {
            // Not a request's own fault (its tokens are sampled ids): fail the step's requests.
            const std::string what =
                dynamic_cast<const std::bad_alloc*>(&e) ? "out of memory" : e.what();
            for (Seq* s : in_step) {
                s->job->error = what;
                s->pending_id = -1;
            }
            for (size_t i = active.size(); i-- > 0;)
                if (!active[i]->job->error.empty()) retire(i);
            continue;
        }
        {
            std::lock_guard<std::mutex> lock(stats_mu_);
            ++stats_.decode_steps;
            stats_.decode_rows += items.size();
            stats_.max_batch = std::max(stats_.max_batch, items.size());
        }
        for (size_t k = 0; k < in_step.size(); ++k) {
            Seq& s = *in_step[k];
            s.pending_id = -1;
            if (!advance(s, &out.logits[k * V])) s.pending_id = -2;  // finished
        }
        for (size_t i = active.size(); i-- > 0;)
            if (active[i]->pending_id == -2) retire(i);
    }
    // Shutting down: the requests still running end here.
    for (auto& s : active) {
        s->job->error = "server shutting down";
        --running_;
        finish(*s);
    }
}

}  // namespace lancet::server
