// The Wan2.2 VAE state dict (`Wan2.2_VAE.pth`, spec §1.5): its structure, the tensor inventory
// declared once (walked by load, validation, synth and the tests), and the file that holds it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace lancet {

class PthFile;
class SafetensorsFile;

// WanVAE_'s constructor arguments. The real file: dim 160, dec_dim 256, z_dim 48, dim_mult
// [1, 2, 4, 4], num_res_blocks 2, temporal_downsample [false, true, true]. Every field is
// recovered from the tensor shapes (wan_vae_config_from_shapes), so narrower VAEs of the same
// structure load too.
struct WanVaeConfig {
    int64_t dim = 160;      // encoder base width
    int64_t dec_dim = 256;  // decoder base width
    int64_t z_dim = 48;     // latent channels
    std::vector<int64_t> dim_mult = {1, 2, 4, 4};
    int num_res_blocks = 2;  // per encoder stage; decoder stages have one more
    std::vector<bool> temporal_downsample = {false, true, true};  // encoder stages 0..n-2

    int stages() const { return static_cast<int>(dim_mult.size()); }
    // Encoder widths [dim, dim·m0, dim·m1, ...]: stage i maps enc_dims()[i] -> enc_dims()[i+1].
    std::vector<int64_t> enc_dims() const;
    // Decoder widths [dec_dim·m_last, dec_dim·m_last, ..., dec_dim·m0] (dim_mult reversed).
    std::vector<int64_t> dec_dims() const;
    // Encoder stage i halves time (downsample3d) / space (every stage but the last).
    bool enc_time_down(int i) const;
    bool enc_space_down(int i) const { return i != stages() - 1; }
    // Decoder stage i doubles time (upsample3d; temporal_downsample reversed) / space.
    bool dec_time_up(int i) const;
    bool dec_space_up(int i) const { return i != stages() - 1; }
    // Pixel frames per latent frame after the first, and pixels per latent side.
    int64_t time_factor() const;
    int64_t space_factor() const;  // 2 (patchify) · 2^(spatial downsamples)
};

enum class VaeTensorKind {
    Conv3dWeight,  // [C_out, C_in, kt, kh, kw] of a CausalConv3d
    Conv2dWeight,  // [C_out, C_in, kh, kw]: Resample's 2-D conv, attention to_qkv / proj
    Bias,
    Gamma,  // RMS_norm gain, [C, 1, 1, 1] (or [C, 1, 1] in the attention block)
};

struct VaeTensorSpec {
    std::string name;
    Shape shape;
    VaeTensorKind kind;
};

// Every tensor of the state dict in nn.Module registration order (= torch's state_dict order).
void for_each_wan_vae_tensor(const WanVaeConfig& cfg,
                             const std::function<void(const VaeTensorSpec&)>& fn);
std::vector<VaeTensorSpec> wan_vae_tensor_list(const WanVaeConfig& cfg);

// Recovers the config from the shapes of a state dict (`shape_of` returns nullptr for an absent
// name). Throws Error prefixed with `where` naming the tensor that is missing or inconsistent.
// The result is then checked against the full inventory by check_wan_vae_tensors.
WanVaeConfig wan_vae_config_from_shapes(
    const std::function<const Shape*(const std::string&)>& shape_of, const std::string& where);
// Fails (one line naming the first offending key and how many problems there are in all) when
// the names and shapes differ from the inventory of `cfg`.
void check_wan_vae_tensors(const WanVaeConfig& cfg,
                           const std::unordered_map<std::string, Shape>& found,
                           const std::string& where);

// A Wan2.2 VAE state dict opened for reading: `Wan2.2_VAE.pth` through the restricted pickle
// reader, or a .safetensors file with the same keys (chosen by the file's first bytes). F32 or
// BF16 tensors, validated strictly against the inventory; the bytes stay in the mapping.
class WanVaeFile {
  public:
    explicit WanVaeFile(const std::string& path);
    ~WanVaeFile();
    WanVaeFile(const WanVaeFile&) = delete;
    WanVaeFile& operator=(const WanVaeFile&) = delete;

    const std::string& path() const { return path_; }
    const WanVaeConfig& config() const { return cfg_; }
    // The tensor's bytes (row-major, F32 or BF16). Throws Error for a name not in the inventory.
    const TensorView& view(const std::string& name) const;
    std::vector<float> to_f32(const std::string& name) const;
    std::vector<double> to_f64(const std::string& name) const;
    // Drops the tensor's mapped pages from memory once a loader has repacked it (they are read
    // from the file again if the view is used later): loading the 1.4 GB VAE then never holds
    // the mapping and the repacked weights at once.
    void release(const std::string& name) const;
    uint64_t params() const { return params_; }
    DType dtype() const { return dtype_; }  // of the first weight (files are not mixed in practice)
    // When set, the blocks built from this file (model/wan_vae.h) round F32 convolution and
    // attention weights to bf16 as they load (what Lance's bf16 autocast multiplies with), so they
    // run on the BF16 kernels; pair it with OpContext::bf16_act = Bf16 for bf16 activations.
    void set_bf16_weights(bool on) { bf16_weights_ = on; }
    bool bf16_weights() const { return bf16_weights_; }

  private:
    std::string path_;
    WanVaeConfig cfg_;
    std::unique_ptr<PthFile> pth_;
    std::unique_ptr<SafetensorsFile> st_;
    std::unordered_map<std::string, TensorView> views_;
    std::vector<std::vector<uint8_t>> gathered_;  // strided .pth tensors made contiguous
    uint64_t params_ = 0;
    DType dtype_ = DType::F32;
    bool bf16_weights_ = false;
};

// The 48-channel latent statistics of Wan2.2 (vae2_2.py), as Lance builds them: mean and std in
// bf16, then 1/std computed from the bf16 std and rounded to bf16 again. Only for z_dim 48; other
// z_dim get mean 0 and 1/std 1 (synthetic VAEs).
struct LatentStats {
    std::vector<float> mean, inv_std;  // bf16 values, held as f32
};
LatentStats wan_latent_stats(int64_t z_dim);

}  // namespace lancet
