// Implementation of the long-job queue.
#include "server/job_queue.h"

#include <algorithm>
#include <atomic>
#include <ctime>
#include <filesystem>

namespace lancet::server {

OwnedFile::~OwnedFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
}

uint64_t JobResult::size() const {
    uint64_t n = bytes.size() + file_bytes;
    for (const auto& p : parts) n += p.size();
    return n;
}

struct JobQueue::Job : JobControl {
    JobStatus st;
    JobRunner run;
    std::shared_ptr<const JobResult> result;
    std::atomic<bool> cancel_flag{false};
    std::mutex* mu = nullptr;
    std::atomic<uint64_t>* steps_done = nullptr;

    bool cancelled() const override { return cancel_flag; }
    void progress(int step, int steps) override {
        std::lock_guard<std::mutex> lock(*mu);
        if (step > st.step) *steps_done += static_cast<uint64_t>(step - st.step);
        st.step = step;
        st.steps = steps;
    }
};

JobQueue::JobQueue(size_t workers, size_t max_pending, size_t keep_finished, uint64_t keep_bytes)
    : max_pending_(max_pending), keep_finished_(keep_finished), keep_bytes_(keep_bytes) {
    for (size_t i = 0; i < std::max<size_t>(1, workers); ++i)
        workers_.emplace_back([this] { worker(); });
}

JobQueue::~JobQueue() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
        for (auto& [id, j] : jobs_) j->cancel_flag = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    // Jobs that never started end as cancelled, so nobody waits on them forever.
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& j : queue_) j->st.state = "cancelled";
    done_cv_.notify_all();
}

std::optional<std::string> JobQueue::submit(const std::string& kind, JobRunner run) {
    auto job = std::make_shared<Job>();
    job->run = std::move(run);
    job->mu = &mu_;
    job->steps_done = &steps_done_;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_ || queue_.size() >= max_pending_) return std::nullopt;
        job->st.id = kind + "_" + std::to_string(next_id_++) + "_" +
                     std::to_string(static_cast<uint64_t>(std::time(nullptr)));
        job->st.kind = kind;
        job->st.state = "queued";
        job->st.created = static_cast<int64_t>(std::time(nullptr));
        jobs_[job->st.id] = job;
        queue_.push_back(job);
    }
    cv_.notify_one();
    return job->st.id;
}

std::optional<JobStatus> JobQueue::status(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    return it->second->st;
}

std::shared_ptr<const JobResult> JobQueue::result(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second->st.state != "succeeded") return nullptr;
    return it->second->result;
}

bool JobQueue::cancel(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end()) return false;
    Job& j = *it->second;
    j.cancel_flag = true;
    if (j.st.state == "queued") {
        // Taken off the queue at once: a waiting job never starts.
        for (auto q = queue_.begin(); q != queue_.end(); ++q)
            if (q->get() == &j) {
                queue_.erase(q);
                break;
            }
        j.st.state = "cancelled";
        finished_.push_back(id);
        evict_locked();
        done_cv_.notify_all();
    }
    return true;
}

std::optional<JobStatus> JobQueue::wait(const std::string& id,
                                        std::shared_ptr<const JobResult>* result) {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    const std::shared_ptr<Job> job = it->second;  // kept alive even if evicted meanwhile
    done_cv_.wait(lock, [&] {
        const std::string& s = job->st.state;
        return s == "succeeded" || s == "failed" || s == "cancelled";
    });
    if (result) *result = job->st.state == "succeeded" ? job->result : nullptr;
    return job->st;
}

void JobQueue::forget(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second->st.state == "queued" || it->second->st.state == "running")
        return;
    if (it->second->result) kept_bytes_ -= it->second->result->size();
    jobs_.erase(it);
    finished_.erase(std::remove(finished_.begin(), finished_.end(), id), finished_.end());
}

// Drops the oldest finished jobs beyond the count and byte bounds (the newest one always stays,
// so a result larger than the bound can still be fetched once).
void JobQueue::evict_locked() {
    while (!finished_.empty() && (finished_.size() > keep_finished_ ||
                                  (kept_bytes_ > keep_bytes_ && finished_.size() > 1))) {
        const auto it = jobs_.find(finished_.front());
        if (it != jobs_.end()) {
            if (it->second->result) kept_bytes_ -= it->second->result->size();
            jobs_.erase(it);
        }
        finished_.pop_front();
    }
}

size_t JobQueue::pending() {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
}

size_t JobQueue::running() {
    std::lock_guard<std::mutex> lock(mu_);
    return running_;
}

void JobQueue::worker() {
    for (;;) {
        std::shared_ptr<Job> job;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
            if (stop_) return;
            job = std::move(queue_.front());
            queue_.pop_front();
            job->st.state = "running";
            ++running_;
        }
        std::string state = "succeeded", error;
        std::shared_ptr<const JobResult> result;
        try {
            result = std::make_shared<const JobResult>(job->run(*job));
        } catch (const std::bad_alloc&) {
            state = "failed";
            error = "out of memory";
        } catch (const std::exception& e) {
            state = "failed";
            error = e.what();
        }
        if (job->cancelled()) state = "cancelled", result = nullptr;
        job->run = nullptr;
        std::lock_guard<std::mutex> lock(mu_);
        --running_;
        job->st.state = state;
        job->st.error = error;
        job->result = result;
        if (result) kept_bytes_ += result->size();
        finished_.push_back(job->st.id);
        evict_locked();
        done_cv_.notify_all();
    }
}

}  // namespace lancet::server
