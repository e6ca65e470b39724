// Synthetic Wan2.2 VAE state dicts: the real structure at any width, written as Wan2.2_VAE.pth
// (PyTorch zip) or as safetensors with the same keys.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "model/wan_vae_tensors.h"

namespace lancet {

// tiny: dim 8 / dec_dim 8; small: 32 / 32; 3b: the real 160 / 256. z_dim 48, dim_mult
// [1, 2, 4, 4], 2 residual blocks and temporal_downsample [false, true, true] at every preset.
WanVaeConfig wan_vae_synth_config(const std::string& preset);

// Fills tensor `s` (all of it, row-major) deterministically from (seed, name). Conv weights are
// N(0, 1/fan_in) so a unit-RMS input (what RMS_norm hands every conv) gives unit-scale outputs,
// halved for the last conv of each residual branch and the heads so that the residual stream grows
// slowly and the decoder's output stays mostly inside the [-1, 1] clamp; gammas 1 + 0.1·N, biases
// 0.02·N.
void fill_wan_vae_tensor(const VaeTensorSpec& s, uint64_t seed, float* out);

enum class VaeFileFormat { Pth, Safetensors };
// Writes the whole state dict (F32 or BF16) to `path` (atomically). Returns the bytes of tensors.
uint64_t write_synth_wan_vae(const std::string& path, const WanVaeConfig& cfg, DType dtype,
                             uint64_t seed, VaeFileFormat format = VaeFileFormat::Pth);

}  // namespace lancet
