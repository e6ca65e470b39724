// The server's generation side: turns image and video requests into job runners for the job
// queue (server/job_queue.h). Requests are checked when they arrive (lancet::Error -> 400); the
// runners run pipeline/generation's Generator on decoder sessions over the one LanceWeights the
// chat engine holds (both experts loaded), so the weights load once for chat and generation.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "io/temp_output.h"
#include "pipeline/generation.h"
#include "server/job_queue.h"

namespace lancet::server {

struct GenServiceOptions {
    std::string model;                     // the model folder (the outputs' "model" metadata)
    std::string vae;                       // Wan2.2 VAE (a .pth or .safetensors)
    int parallel = 1;                      // generation jobs running at once (sessions)
    size_t threads = 0;                    // threads in all (0: the process default)
    uint64_t max_pixels = 1024 * 1024;     // width x height of a generated image or frame
    uint64_t max_input_pixels = 16 << 20;  // an uploaded image or video frame
    int max_images = 4;                    // n of one image request
    int max_frames = 81;                   // frames of one video
    int max_steps = 100;                   // sampler steps of one request
    std::string temp_parent;               // where the temp folder goes ("": $TMPDIR or /tmp)
};

class GenService {
  public:
    GenService(const LanceCheckpoint& ck, const Qwen2Tokenizer& tok, const LanceWeights& weights,
               const GenServiceOptions& opt);
    ~GenService();  // removes the temp folder and everything in it
    GenService(const GenService&) = delete;
    GenService& operator=(const GenService&) = delete;

    // POST /v1/images/generations (edit = false) and /v1/images/edits (edit = true, `upload` the
    // image file's bytes). The runner's result holds one PNG per image in `parts`.
    JobRunner image_job(const nlohmann::json& body, const std::string* upload, bool edit);
    // POST /v1/videos: t2v, i2v (body "image": a data URL or base64) or video_edit (body "video").
    // The runner writes the MP4 into the temp folder; the result owns that file.
    JobRunner video_job(const nlohmann::json& body);

    const std::string& temp_dir() const { return dir_; }
    // The ViT image edits use; the HTTP server's image chat shares it (ServerOptions::vision).
    const std::shared_ptr<SharedVisionTower>& vision() const { return vision_; }
    int parallel() const { return static_cast<int>(sessions_.size()); }

  private:
    struct Session {
        std::unique_ptr<ThreadPool> pool;
        std::unique_ptr<DecoderSession> dec;
        bool busy = false;
    };
    Session& acquire();
    void release(Session& s);
    GenSettings settings(const nlohmann::json& body) const;
    // Writes an upload into the temp folder (removed when the returned file goes).
    std::shared_ptr<OwnedFile> keep_upload(const std::string& bytes, const char* ext);

    const LanceCheckpoint& ck_;
    GenServiceOptions opt_;
    std::shared_ptr<SharedVisionTower> vision_;
    Generator gen_;
    std::string dir_;
    std::unique_ptr<TempRegistration> dir_reg_;
    std::vector<std::unique_ptr<Session>> sessions_;
    std::mutex mu_;
    std::condition_variable cv_;
    uint64_t next_file_ = 1;
};

}  // namespace lancet::server
