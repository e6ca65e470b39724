// Long jobs (video generation) behind ids: a bounded queue, worker threads, step progress,
// cancellation, results kept for a while. The HTTP routes /v1/videos* sit on top of it; what a
// job computes is a runner handed in by whoever submits it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace lancet::server {

// What a runner sees: cancellation to poll between steps, and a place to report progress.
class JobControl {
  public:
    virtual ~JobControl() = default;
    virtual bool cancelled() const = 0;
    virtual void progress(int step, int steps) = 0;
};

// A file the result owns: removed when the last reference to it goes (the job evicted from the
// store and no response still reading it).
class OwnedFile {
  public:
    explicit OwnedFile(std::string path) : path_(std::move(path)) {}
    ~OwnedFile();
    OwnedFile(const OwnedFile&) = delete;
    OwnedFile& operator=(const OwnedFile&) = delete;
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

struct JobResult {
    std::string bytes;                // the content in memory (or empty when in `file`)
    std::string content_type;         // "video/mp4", "image/png"
    std::vector<std::string> parts;   // several outputs in memory (n images)
    std::shared_ptr<OwnedFile> file;  // the content on disk (a video in the server's temp dir)
    uint64_t file_bytes = 0;          // its size
    // Bytes this result holds, for the store's bound.
    uint64_t size() const;
};

// Runs the job; throws (lancet::Error or any std::exception) to fail it.
using JobRunner = std::function<JobResult(JobControl&)>;

struct JobStatus {
    std::string id, kind;
    std::string state;  // queued | running | succeeded | failed | cancelled
    int step = 0, steps = 0;
    std::string error;
    int64_t created = 0;  // unix seconds
};

class JobQueue {
  public:
    // `workers` jobs run at once; at most `max_pending` wait; the newest finished jobs stay
    // readable while there are at most `keep_finished` of them holding at most `keep_bytes` of
    // results (older ones are forgotten, their results freed and their files removed).
    JobQueue(size_t workers, size_t max_pending, size_t keep_finished = 64,
             uint64_t keep_bytes = uint64_t{1} << 30);
    ~JobQueue();  // cancels everything and joins the workers
    JobQueue(const JobQueue&) = delete;
    JobQueue& operator=(const JobQueue&) = delete;

    // The new job's id, or nullopt when the queue is full.
    std::optional<std::string> submit(const std::string& kind, JobRunner run);
    std::optional<JobStatus> status(const std::string& id);
    // The result of a succeeded job; nullptr otherwise.
    std::shared_ptr<const JobResult> result(const std::string& id);
    // Cancels a queued or running job; false when the id is unknown.
    bool cancel(const std::string& id);
    // Waits until the job has finished (succeeded, failed or cancelled); nullopt for an unknown id.
    // `result` (optional) receives the job's result, even if the store evicts it meanwhile.
    std::optional<JobStatus> wait(const std::string& id,
                                  std::shared_ptr<const JobResult>* result = nullptr);
    // Forgets a finished job now (its result freed once nobody holds it).
    void forget(const std::string& id);
    size_t pending();
    size_t running();
    // Sampler steps reported by every job so far (/metrics).
    uint64_t steps_done() const { return steps_done_; }

  private:
    struct Job;
    void worker();
    void evict_locked();

    size_t max_pending_, keep_finished_;
    uint64_t keep_bytes_, kept_bytes_ = 0;
    std::condition_variable done_cv_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::string, std::shared_ptr<Job>> jobs_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::deque<std::string> finished_;  // ids, oldest first
    uint64_t next_id_ = 1;
    size_t running_ = 0;
    bool stop_ = false;
    std::atomic<uint64_t> steps_done_{0};
    std::vector<std::thread> workers_;
};

}  // namespace lancet::server
