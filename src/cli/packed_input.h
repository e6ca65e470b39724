// The packed-sequence input of `lancet forward` and `lancet sample` (format in README.md): one
// reader with one-line errors naming the file and tensor.
#pragma once

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/positions.h"
#include "model/vit.h"

namespace lancet::cli {

// The start of every file-to-file model command (forward, forward --component vit, sample): both
// paths given, the input present, then the model folder opened (ViT config from vit_dir if given),
// so a typo fails before the slow weight load.
inline std::unique_ptr<LanceCheckpoint> open_model_for(const char* cmd, const std::string& model,
                                                       const std::string& vit_dir,
                                                       const std::string& input,
                                                       const std::string& out) {
    if (input.empty() || out.empty()) fail(cmd, ": --input and --out are required");
    std::error_code ec;
    if (!std::filesystem::exists(input, ec)) fail(input, ": no such input file");
    OpenOptions oo;
    oo.vit_dir = vit_dir;
    return LanceCheckpoint::open(model, oo);
}

// Reads the input file's tensors with one-line errors naming the tensor.
class InputFile {
  public:
    explicit InputFile(const std::string& path) : path_(path), file_(path) {}

    bool has(const std::string& name) const { return file_.find(name) != nullptr; }

    const TensorEntry& get(const std::string& name, DType dtype, size_t rank) const {
        const TensorEntry* e = file_.find(name);
        if (!e) fail(path_, ": missing tensor ", name);
        if (e->dtype != dtype)
            fail(path_, ": ", name, " is ", dtype_name(e->dtype), ", expected ", dtype_name(dtype));
        if (e->shape.size() != rank)
            fail(path_, ": ", name, " has shape ", shape_str(e->shape), ", expected rank ", rank);
        return *e;
    }

    std::vector<int64_t> i64(const std::string& name, const Shape& shape) const {
        const TensorEntry& e = get(name, DType::I64, shape.size());
        check_shape(name, e, shape);
        std::vector<int64_t> v(static_cast<size_t>(shape_numel(e.shape)));
        std::memcpy(v.data(), file_.view(e).data, v.size() * 8);
        return v;
    }
    std::vector<uint8_t> u8(const std::string& name, const Shape& shape) const {
        const TensorEntry& e = get(name, DType::U8, shape.size());
        check_shape(name, e, shape);
        const TensorView t = file_.view(e);
        return std::vector<uint8_t>(t.data, t.data + t.nbytes);
    }
    std::vector<float> f32(const std::string& name, const Shape& shape) const {
        const TensorEntry& e = get(name, DType::F32, shape.size());
        check_shape(name, e, shape);
        std::vector<float> v(static_cast<size_t>(shape_numel(e.shape)));
        std::memcpy(v.data(), file_.view(e).data, v.size() * 4);
        for (size_t i = 0; i < v.size(); ++i)
            if (!std::isfinite(v[i])) fail(path_, ": ", name, " holds a non-finite value at ", i);
        return v;
    }
    // Length of the first dimension of a rank-1 tensor.
    int64_t len(const std::string& name, DType dtype) const { return get(name, dtype, 1).shape[0]; }
    const std::string& path() const { return path_; }

  private:
    void check_shape(const std::string& name, const TensorEntry& e, const Shape& want) const {
        if (e.shape != want)
            fail(path_, ": ", name, " has shape ", shape_str(e.shape), ", expected ",
                 shape_str(want));
    }
    std::string path_;
    SafetensorsFile file_;
};

// A packed sequence as read from a file: the batch (positions filled in unless `positions` was
// given and latents/timesteps only when `latents` is set), the vision grids, and the ViT input.
struct PackedSequence {
    Batch b;
    std::vector<VisionGrid> grids;
    int64_t N = 0;                     // gen rows
    std::vector<int64_t> latent_grid;  // (t, h, w) of every VAE block
    bool positions_given = false;
    bool has_vit = false;
    std::vector<float> vit_video;  // [C, T, H, W]
    VitPlan vplan;
    int64_t vit_T = 0, vit_H = 0, vit_W = 0;
};

// Reads and validates token_ids, is_gen, split_lens, split_modes (0 causal, 1 full, 2 noise,
// 3 full_noise = full), latent_grid, pe3d_index, positions and vit_video; with `latents` also
// `latents` and `timesteps`. Positions, when absent, come from get_rope_index.
PackedSequence read_packed_sequence(const InputFile& in, const LanceCheckpoint& ck,
                                    const std::string& model, bool latents);

}  // namespace lancet::cli
