// LanceCheckpoint: a Lance model folder (original, AWQ INT4/INT5 or NVFP4), opened and validated
// against the tensor inventory. The one loader every command uses.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/awq_meta.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/lance_config.h"
#include "model/lance_tensors.h"

namespace lancet {

enum class CheckpointKind { Original, Awq, Nvfp4 };

struct OpenOptions {
    // Folder holding config.json + vit.safetensors for a Lance_3B-style checkpoint whose ViT is
    // not bundled. Empty: try ../Qwen2.5-VL-ViT beside the model folder.
    std::string vit_dir;
    // Reject a folder that misses tensors (true for every command but inspect).
    bool strict = true;
};

// The quantized form of one linear, as views into the mapped file.
struct QuantizedLinearView {
    QuantFormat format;
    int out = 0, in = 0, group_size = 0;
    TensorView qweight, scales, zeros;  // zeros unused for NVFP4 (scales = scales_bf16)
};

class LanceCheckpoint {
  public:
    static std::unique_ptr<LanceCheckpoint> open(const std::string& dir,
                                                 const OpenOptions& opt = {});

    const std::string& dir() const { return dir_; }
    const LanceConfig& config() const { return config_; }
    CheckpointKind kind() const { return kind_; }
    VitLayout vit_layout() const { return vit_layout_; }
    bool has_vit() const { return vit_layout_ == VitLayout::Bundled || vit_ != nullptr; }
    const AwqMeta* quant_meta() const { return meta_ ? &*meta_ : nullptr; }
    const Checkpoint& main() const { return *main_; }
    const Checkpoint* vit_file() const { return vit_.get(); }
    // Tensor count, missing/unexpected lists (non-empty only when opened with strict = false).
    const std::vector<std::string>& problems() const { return problems_; }
    // The first few problems joined with "; " plus "and N more": the body of the one-line error.
    std::string problems_summary() const;

    // Every tensor the folder should hold, with the form it has on disk (for AWQ: the linears
    // listed in the meta are replaced by their qweight/scales/zeros).
    const std::vector<TensorSpec>& expected() const { return expected_; }

    // A plain (unquantized) tensor by its Lance name; ViT names use the "vit_model." prefix even
    // when the ViT lives in a separate file.
    TensorView tensor(const std::string& name) const;
    bool has_tensor(const std::string& name) const;
    // Drops this process's mapped pages behind a view returned by tensor() or quantized() (a
    // streaming pass calls it after each tensor so RSS does not grow with the model).
    void release(const TensorView& v) const;
    // Starts reading the file pages behind a view into the page cache (MappedFile::prefetch).
    void prefetch(const TensorView& v) const;
    // Whether the linear `base` ("...q_proj") is stored quantized, and its quantized views.
    bool is_quantized(const std::string& base) const;
    QuantizedLinearView quantized(const std::string& base) const;

  private:
    void validate(bool strict);
    const MappedFile* mapping_of(const TensorView& v) const;  // the file a view lies in, or null

    std::string dir_;
    LanceConfig config_;
    CheckpointKind kind_ = CheckpointKind::Original;
    VitLayout vit_layout_ = VitLayout::Bundled;
    std::optional<AwqMeta> meta_;
    std::unique_ptr<Checkpoint> main_, vit_;
    std::vector<TensorSpec> expected_;
    std::vector<std::string> problems_;
    std::unique_ptr<SourceGuard> guard_;  // no writer may put output into this folder
};

// The on-disk tensors that replace a quantized linear weight [out, in].
std::vector<TensorSpec> quantized_tensor_specs(const TensorSpec& weight, QuantFormat f,
                                               int group_size);

}  // namespace lancet
