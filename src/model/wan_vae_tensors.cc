// The Wan2.2 VAE inventory (spec §1.5, module structure of vae2_2.py) and its loader.
#include "model/wan_vae_tensors.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/numeric.h"
#include "io/mmap_file.h"
#include "io/pth.h"
#include "io/safetensors.h"

namespace lancet {

std::vector<int64_t> WanVaeConfig::enc_dims() const {
    std::vector<int64_t> d{dim};
    for (int64_t m : dim_mult) d.push_back(dim * m);
    return d;
}

std::vector<int64_t> WanVaeConfig::dec_dims() const {
    std::vector<int64_t> d{dec_dim * dim_mult.back()};
    for (size_t i = dim_mult.size(); i-- > 0;) d.push_back(dec_dim * dim_mult[i]);
    return d;
}

bool WanVaeConfig::enc_time_down(int i) const {
    return enc_space_down(i) && i < static_cast<int>(temporal_downsample.size()) &&
           temporal_downsample[static_cast<size_t>(i)];
}

bool WanVaeConfig::dec_time_up(int i) const {
    // Decoder stage i mirrors encoder stage n-2-i (temperal_upsample = temperal_downsample[::-1]).
    const int n = static_cast<int>(temporal_downsample.size());
    return dec_space_up(i) && i < n && temporal_downsample[static_cast<size_t>(n - 1 - i)];
}

int64_t WanVaeConfig::time_factor() const {
    int64_t f = 1;
    for (int i = 0; i < stages(); ++i)
        if (enc_time_down(i)) f *= 2;
    return f;
}

int64_t WanVaeConfig::space_factor() const {
    int64_t f = 2;
    for (int i = 0; i < stages(); ++i)
        if (enc_space_down(i)) f *= 2;
    return f;
}

namespace {

using Emit = std::function<void(const VaeTensorSpec&)>;

void conv3d(const Emit& fn, const std::string& p, int64_t out, int64_t in, int64_t kt, int64_t k) {
    fn({p + ".weight", {out, in, kt, k, k}, VaeTensorKind::Conv3dWeight});
    fn({p + ".bias", {out}, VaeTensorKind::Bias});
}

void conv2d(const Emit& fn, const std::string& p, int64_t out, int64_t in, int64_t k) {
    fn({p + ".weight", {out, in, k, k}, VaeTensorKind::Conv2dWeight});
    fn({p + ".bias", {out}, VaeTensorKind::Bias});
}

void gamma(const Emit& fn, const std::string& p, int64_t c, bool images = false) {
    fn({p + ".gamma", images ? Shape{c, 1, 1} : Shape{c, 1, 1, 1}, VaeTensorKind::Gamma});
}

// ResidualBlock: residual.{0: RMS, 2: conv3, 3: RMS, 6: conv3}, shortcut (1x1x1) if widths differ.
void residual_block(const Emit& fn, const std::string& p, int64_t in, int64_t out) {
    gamma(fn, p + ".residual.0", in);
    conv3d(fn, p + ".residual.2", out, in, 3, 3);
    gamma(fn, p + ".residual.3", out);
    conv3d(fn, p + ".residual.6", out, out, 3, 3);
    if (in != out) conv3d(fn, p + ".shortcut", out, in, 1, 1);
}

void attention_block(const Emit& fn, const std::string& p, int64_t c) {
    gamma(fn, p + ".norm", c, /*images=*/true);
    conv2d(fn, p + ".to_qkv", 3 * c, c, 1);
    conv2d(fn, p + ".proj", c, c, 1);
}

void middle(const Emit& fn, const std::string& p, int64_t c) {
    residual_block(fn, p + ".0", c, c);
    attention_block(fn, p + ".1", c);
    residual_block(fn, p + ".2", c, c);
}

}  // namespace

void for_each_wan_vae_tensor(const WanVaeConfig& cfg, const Emit& fn) {
    const auto ed = cfg.enc_dims(), dd = cfg.dec_dims();
    const int n = cfg.stages();
    // Encoder3d(dim, 2·z_dim)
    conv3d(fn, "encoder.conv1", ed[0], 12, 3, 3);
    for (int i = 0; i < n; ++i) {
        const std::string s = "encoder.downsamples." + std::to_string(i) + ".downsamples.";
        int64_t in = ed[i];
        for (int k = 0; k < cfg.num_res_blocks; ++k) {
            residual_block(fn, s + std::to_string(k), in, ed[i + 1]);
            in = ed[i + 1];
        }
        if (cfg.enc_space_down(i)) {
            const std::string r = s + std::to_string(cfg.num_res_blocks);
            conv2d(fn, r + ".resample.1", in, in, 3);
            if (cfg.enc_time_down(i)) conv3d(fn, r + ".time_conv", in, in, 3, 1);
        }
    }
    middle(fn, "encoder.middle", ed[n]);
    gamma(fn, "encoder.head.0", ed[n]);
    conv3d(fn, "encoder.head.2", 2 * cfg.z_dim, ed[n], 3, 3);
    conv3d(fn, "conv1", 2 * cfg.z_dim, 2 * cfg.z_dim, 1, 1);
    conv3d(fn, "conv2", cfg.z_dim, cfg.z_dim, 1, 1);
    // Decoder3d(dec_dim, z_dim)
    conv3d(fn, "decoder.conv1", dd[0], cfg.z_dim, 3, 3);
    middle(fn, "decoder.middle", dd[0]);
    for (int i = 0; i < n; ++i) {
        const std::string s = "decoder.upsamples." + std::to_string(i) + ".upsamples.";
        int64_t in = dd[i];
        for (int k = 0; k < cfg.num_res_blocks + 1; ++k) {
            residual_block(fn, s + std::to_string(k), in, dd[i + 1]);
            in = dd[i + 1];
        }
        if (cfg.dec_space_up(i)) {
            const std::string r = s + std::to_string(cfg.num_res_blocks + 1);
            conv2d(fn, r + ".resample.1", in, in, 3);
            if (cfg.dec_time_up(i)) conv3d(fn, r + ".time_conv", 2 * in, in, 3, 1);
        }
    }
    gamma(fn, "decoder.head.0", dd[n]);
    conv3d(fn, "decoder.head.2", 12, dd[n], 3, 3);
}

std::vector<VaeTensorSpec> wan_vae_tensor_list(const WanVaeConfig& cfg) {
    std::vector<VaeTensorSpec> v;
    for_each_wan_vae_tensor(cfg, [&](const VaeTensorSpec& s) { v.push_back(s); });
    return v;
}

WanVaeConfig wan_vae_config_from_shapes(
    const std::function<const Shape*(const std::string&)>& shape_of, const std::string& where) {
    auto need = [&](const std::string& name, size_t rank) -> const Shape& {
        const Shape* s = shape_of(name);
        if (!s) fail(where, ": no tensor '", name, "' (not a Wan2.2 VAE state dict?)");
        if (s->size() != rank || (*s)[0] <= 0)
            fail(where, ": tensor '", name, "' has shape ", shape_str(*s), ", expected rank ",
                 rank);
        return *s;
    };
    WanVaeConfig c;
    c.dim = need("encoder.conv1.weight", 5)[0];
    c.z_dim = need("conv2.weight", 5)[0];
    int n = 0;
    while (shape_of("encoder.downsamples." + std::to_string(n) + ".downsamples.0.residual.0.gamma"))
        ++n;
    if (n == 0) need("encoder.downsamples.0.downsamples.0.residual.0.gamma", 4);
    if (n > 8) fail(where, ": ", n, " encoder stages (a Wan2.2 VAE has 4)");
    int nrb = 0;
    while (
        shape_of("encoder.downsamples.0.downsamples." + std::to_string(nrb) + ".residual.0.gamma"))
        ++nrb;
    c.num_res_blocks = nrb;
    c.dim_mult.clear();
    c.temporal_downsample.clear();
    for (int i = 0; i < n; ++i) {
        const std::string s = "encoder.downsamples." + std::to_string(i) + ".downsamples.";
        const int64_t out = need(s + "0.residual.2.weight", 5)[0];
        if (out % c.dim != 0)
            fail(where, ": tensor '", s, "0.residual.2.weight' has ", out,
                 " output channels, not a multiple of the base width ", c.dim);
        c.dim_mult.push_back(out / c.dim);
        if (i + 1 < n)
            c.temporal_downsample.push_back(
                shape_of(s + std::to_string(nrb) + ".time_conv.weight") != nullptr);
    }
    const int64_t head_in = need("decoder.head.2.weight", 5)[1];
    if (head_in % c.dim_mult[0] != 0)
        fail(where, ": tensor 'decoder.head.2.weight' has ", head_in,
             " input channels, not a multiple of the first stage multiplier ", c.dim_mult[0]);
    c.dec_dim = head_in / c.dim_mult[0];
    // AvgDown3D / DupUp3D group channels: the widths must divide as the modules assert.
    const auto ed = c.enc_dims(), dd = c.dec_dims();
    for (int i = 0; i < n; ++i) {
        const int64_t fe = (c.enc_time_down(i) ? 2 : 1) * (c.enc_space_down(i) ? 4 : 1);
        if ((ed[i] * fe) % ed[i + 1] != 0)
            fail(where, ": encoder stage ", i, " widths ", ed[i], " -> ", ed[i + 1],
                 " cannot be averaged (AvgDown3D)");
        const int64_t fd = (c.dec_time_up(i) ? 2 : 1) * (c.dec_space_up(i) ? 4 : 1);
        if (c.dec_space_up(i) && (dd[i + 1] * fd) % dd[i] != 0)
            fail(where, ": decoder stage ", i, " widths ", dd[i], " -> ", dd[i + 1],
                 " cannot be duplicated (DupUp3D)");
    }
    return c;
}

void check_wan_vae_tensors(const WanVaeConfig& cfg,
                           const std::unordered_map<std::string, Shape>& found,
                           const std::string& where) {
    size_t problems = 0;
    std::string first;
    auto note = [&](std::string what) {
        if (problems++ == 0) first = std::move(what);
    };
    size_t matched = 0;
    for_each_wan_vae_tensor(cfg, [&](const VaeTensorSpec& s) {
        const auto it = found.find(s.name);
        if (it == found.end()) return note("missing tensor '" + s.name + "' " + shape_str(s.shape));
        ++matched;
        if (it->second != s.shape)
            note("tensor '" + s.name + "' has shape " + shape_str(it->second) + ", expected " +
                 shape_str(s.shape));
    });
    if (matched != found.size()) {
        std::unordered_map<std::string, int> known;
        for_each_wan_vae_tensor(cfg, [&](const VaeTensorSpec& s) { known[s.name] = 1; });
        for (const auto& [name, shape] : found)
            if (!known.count(name)) note("unexpected tensor '" + name + "' " + shape_str(shape));
    }
    if (problems)
        fail(where, ": ", first,
             problems > 1 ? " (and " + std::to_string(problems - 1) + " more problems)" : "");
}

WanVaeFile::WanVaeFile(const std::string& path) : path_(path) {
    // A zip archive (torch.save) starts with "PK"; everything else is tried as safetensors.
    bool zip = false;
    if (FILE* f = std::fopen(path.c_str(), "rb")) {
        char m[2] = {0, 0};
        zip = std::fread(m, 1, 2, f) == 2 && m[0] == 'P' && m[1] == 'K';
        std::fclose(f);
    }
    std::unordered_map<std::string, Shape> shapes;
    if (zip || path.size() < 12 || path.substr(path.size() - 12) != ".safetensors") {
        pth_ = std::make_unique<PthFile>(path);
        for (const PthTensor& t : pth_->tensors()) {
            TensorView v;
            v.dtype = t.dtype;
            v.shape = t.shape;
            if (t.is_contiguous()) {
                v.data = t.data();
            } else {
                gathered_.push_back(t.to_contiguous());
                v.data = gathered_.back().data();
            }
            v.nbytes = t.nbytes();
            views_[t.name] = v;
            shapes[t.name] = t.shape;
        }
    } else {
        st_ = std::make_unique<SafetensorsFile>(path);
        for (const TensorEntry& e : st_->tensors()) {
            views_[e.name] = st_->view(e);
            shapes[e.name] = e.shape;
        }
    }
    cfg_ = wan_vae_config_from_shapes(
        [&](const std::string& n) -> const Shape* {
            const auto it = shapes.find(n);
            return it == shapes.end() ? nullptr : &it->second;
        },
        path);
    check_wan_vae_tensors(cfg_, shapes, path);
    bool first = true;
    for_each_wan_vae_tensor(cfg_, [&](const VaeTensorSpec& s) {
        const TensorView& v = views_.at(s.name);
        if (v.dtype != DType::F32 && v.dtype != DType::BF16)
            fail(path, ": tensor '", s.name, "' is ", dtype_name(v.dtype),
                 " (F32 or BF16 expected)");
        if (first) dtype_ = v.dtype, first = false;
        params_ += static_cast<uint64_t>(v.numel());
    });
}

WanVaeFile::~WanVaeFile() = default;

const TensorView& WanVaeFile::view(const std::string& name) const {
    const auto it = views_.find(name);
    if (it == views_.end()) fail(path_, ": no tensor '", name, "'");
    return it->second;
}

void WanVaeFile::release(const std::string& name) const {
    const TensorView& v = view(name);
    const std::span<const uint8_t> bytes(v.data, v.nbytes);
    if (pth_) pth_->release(bytes);
    if (st_) {
        const MappedFile& m = st_->mapping();
        if (v.data >= m.data() && v.data + v.nbytes <= m.data() + m.size())
            m.release(static_cast<size_t>(v.data - m.data()), v.nbytes);
    }
}

std::vector<float> WanVaeFile::to_f32(const std::string& name) const {
    return lancet::to_f32(view(name));
}

std::vector<double> WanVaeFile::to_f64(const std::string& name) const {
    const TensorView& v = view(name);
    std::vector<double> out(static_cast<size_t>(v.numel()));
    convert_to_f64(v, out.data());
    return out;
}

namespace {

// vae2_2.py, Wan2_2_VAE.__init__: the per-channel latent mean and std of the 48 channels.
constexpr double kLatentMean[48] = {
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174,  0.1838,  0.1557,  -0.1382, 0.0542,
    0.2813,  0.0891,  0.1570,  -0.0098, 0.0375,  -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
    0.2665,  -0.2108, -0.2158, 0.2502,  -0.2055, -0.0322, 0.1109,  0.1567,  -0.0729, 0.0899,
    -0.2799, -0.1230, -0.0313, -0.1649, 0.0117,  0.0723,  -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152,  0.1957,  0.1433,  -0.2944, 0.3573,  -0.0548, -0.1681, -0.0667};
constexpr double kLatentStd[48] = {
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744};

// A double rounded to the nearest bf16 (ties to even) in one step, as torch.tensor(..., dtype=
// torch.bfloat16) rounds its Python floats: going through f32 first could create a false tie.
float bf16_from_double(double d) {
    const float f = static_cast<float>(d);
    uint32_t u = f32_bits(f);
    if ((u & 0xffff) == 0x8000 && static_cast<double>(f) != d) {
        // f sits exactly halfway between two bf16 values only because of the first rounding:
        // the true value decides the direction.
        if (std::fabs(static_cast<double>(f)) < std::fabs(d))
            u += 0x8000;
        else
            u -= 0x8000;
        return f32_from_bits(u & 0xffff0000u);
    }
    return round_bf16(f);
}

}  // namespace

LatentStats wan_latent_stats(int64_t z_dim) {
    LatentStats s;
    s.mean.assign(static_cast<size_t>(z_dim), 0.0f);
    s.inv_std.assign(static_cast<size_t>(z_dim), 1.0f);
    if (z_dim != 48) return s;
    for (size_t c = 0; c < 48; ++c) {
        // 1.0 / std divides in f32 (torch's opmath for bf16) and rounds back to bf16.
        s.mean[c] = bf16_from_double(kLatentMean[c]);
        s.inv_std[c] = round_bf16(1.0f / bf16_from_double(kLatentStd[c]));
    }
    return s;
}

}  // namespace lancet
