// Synthetic Wan2.2 VAE weights, streamed tensor by tensor into the PyTorch zip writer.
#include "model/wan_vae_synth.h"

#include <cmath>
#include <memory>

#include "core/error.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "io/pth_writer.h"
#include "io/safetensors.h"

namespace lancet {

WanVaeConfig wan_vae_synth_config(const std::string& preset) {
    WanVaeConfig c;  // the real structure
    if (preset == "tiny") {
        c.dim = 8, c.dec_dim = 8;
    } else if (preset == "small") {
        c.dim = 32, c.dec_dim = 32;
    } else if (preset != "3b") {
        fail("unknown preset \"", preset, "\" (tiny, small, 3b)");
    }
    return c;
}

void fill_wan_vae_tensor(const VaeTensorSpec& s, uint64_t seed, float* out) {
    uint64_t h = 1469598103934665603ull ^ (seed * 0x9e3779b97f4a7c15ull);
    for (unsigned char c : s.name) h = (h ^ c) * 1099511628211ull;
    Rng rng(h);
    const int64_t n = shape_numel(s.shape);
    switch (s.kind) {
        case VaeTensorKind::Gamma:
            for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(1.0 + 0.1 * rng.normal());
            break;
        case VaeTensorKind::Bias:
            for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(0.02 * rng.normal());
            break;
        case VaeTensorKind::Conv3dWeight:
        case VaeTensorKind::Conv2dWeight: {
            const int64_t fan_in = n / s.shape[0];
            const bool damped = s.name.find("residual.6.") != std::string::npos ||
                                s.name.find("head.2.") != std::string::npos ||
                                s.name.find(".proj.") != std::string::npos;
            const double scale = (damped ? 0.5 : 1.0) / std::sqrt(static_cast<double>(fan_in));
            for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(scale * rng.normal());
            break;
        }
    }
}

uint64_t write_synth_wan_vae(const std::string& path, const WanVaeConfig& cfg, DType dtype,
                             uint64_t seed, VaeFileFormat format) {
    if (dtype != DType::F32 && dtype != DType::BF16) fail(path, ": VAE dtype must be F32 or BF16");
    const auto specs = wan_vae_tensor_list(cfg);
    std::unique_ptr<PthWriter> pth;
    std::unique_ptr<SafetensorsWriter> st;
    if (format == VaeFileFormat::Pth)
        pth = std::make_unique<PthWriter>(path);
    else
        st = std::make_unique<SafetensorsWriter>(path);
    for (const auto& s : specs)
        pth ? pth->add(s.name, dtype, s.shape) : st->add(s.name, dtype, s.shape);
    if (pth) {
        pth->begin();
    } else {
        st->set_metadata("format", "pt");
        st->begin();
    }
    uint64_t bytes = 0;
    std::vector<float> buf;
    std::vector<uint16_t> half;
    for (const auto& s : specs) {
        buf.resize(static_cast<size_t>(shape_numel(s.shape)));
        fill_wan_vae_tensor(s, seed, buf.data());
        const void* p = buf.data();
        size_t nb = buf.size() * 4;
        if (dtype == DType::BF16) {
            half.resize(buf.size());
            for (size_t i = 0; i < buf.size(); ++i) half[i] = f32_to_bf16(buf[i]);
            p = half.data();
            nb = half.size() * 2;
        }
        pth ? pth->append(p, nb) : st->append(p, nb);
        bytes += nb;
    }
    pth ? pth->finish() : st->finish();
    return bytes;
}

}  // namespace lancet
