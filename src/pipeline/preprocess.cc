// Lance's preprocessing: buckets, crops, the Pillow bicubic resize and normalisation.
#include "pipeline/preprocess.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"

namespace lancet {

namespace {

// Python's round() on a float: half to even (the default FE_TONEAREST mode).
int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

// Pillow's bicubic kernel (Resample.c), a = -0.5.
double bicubic(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed point: 22 fractional bits

// One pass's taps: output i reads inputs [first[i], first[i] + count[i]) with weights
// k[i * ksize + j] in 22-bit fixed point.
struct Taps {
    int ksize = 0;
    std::vector<int> first, count;
    std::vector<int32_t> k;
};

Taps pillow_taps(int in_size, int out_size) {
    Taps t;
    // Pillow passes the box as floats; (in1 - in0) / out in double.
    const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
    const double filterscale = std::max(scale, 1.0);
    const double support = 2.0 * filterscale;
    t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    t.first.resize(static_cast<size_t>(out_size));
    t.count.resize(static_cast<size_t>(out_size));
    t.k.assign(static_cast<size_t>(out_size) * t.ksize, 0);
    std::vector<double> w(static_cast<size_t>(t.ksize));
    const double inv = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        // C casts truncate toward zero; negative starts clamp to 0 either way.
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            w[static_cast<size_t>(x)] = bicubic((x + xmin - center + 0.5) * inv);
            ww += w[static_cast<size_t>(x)];
        }
        for (int x = 0; x < xmax; ++x) {
            double v = w[static_cast<size_t>(x)];
            if (ww != 0.0) v /= ww;
            // Round half away from zero, then truncate (Pillow's normalize_coeffs_8bpc).
            t.k[static_cast<size_t>(xx) * t.ksize + x] = static_cast<int32_t>(
                v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
        }
        t.first[static_cast<size_t>(xx)] = xmin;
        t.count[static_cast<size_t>(xx)] = xmax;
    }
    return t;
}

// Pillow's clip8: the accumulator (which starts at one half) shifted down, clamped to a byte.
inline uint8_t clip8(int32_t ss) {
    const int32_t v = ss >> kPrecisionBits;  // arithmetic shift: floor, as in C on gcc
    return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// acc[i] += line[i] * k for i < n. Restrict parameters and fixed-length blocks let -O2's cheap
// vectoriser take the loop (it would not with a runtime alias check or an unknown trip count).
void accumulate_row(int32_t* __restrict acc, const uint8_t* __restrict line, int32_t k, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; ++j) acc[i + j] += line[i + j] * k;
    for (; i < n; ++i) acc[i] += line[i] * k;
}

}  // namespace

const std::vector<std::string>& preset_names() {
    static const std::vector<std::string> names = {"image_256res", "video_192p", "image_512res",
                                                   "image_768res", "video_360p", "video_480p"};
    return names;
}

StreamSpec stream_spec(const std::string& preset, VisionStream stream) {
    int vae = 0, vit = 0;
    if (preset == "image_256res" || preset == "video_192p") {
        vae = 256, vit = 224;
    } else if (preset == "image_512res") {
        vae = 512, vit = 448;
    } else if (preset == "image_768res") {
        vae = 768, vit = 672;
    } else if (preset == "video_360p") {
        vae = 480, vit = 476;
    } else if (preset == "video_480p") {
        vae = 640, vit = 616;
    } else {
        fail("unknown resolution preset \"", preset,
             "\" (image_256res, video_192p, image_512res, image_768res, video_360p, video_480p)");
    }
    StreamSpec s;
    if (stream == VisionStream::Vit) {
        s.resolution = vit;
        s.divisible = 28;
        const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
        const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
        std::copy(mean, mean + 3, s.mean);
        std::copy(std, std + 3, s.std);
    } else {
        s.resolution = vae;
        s.divisible = 16;
        std::fill(s.mean, s.mean + 3, 0.5f);
        std::fill(s.std, s.std + 3, 0.5f);
    }
    return s;
}

VisionStream parse_stream(const std::string& name) {
    if (name == "vit") return VisionStream::Vit;
    if (name == "vae") return VisionStream::Vae;
    fail("unknown stream \"", name, "\" (vit or vae)");
}

std::vector<Bucket> lance_buckets(int resolution) {
    const double max_area = static_cast<double>(resolution) * resolution;
    const int f = 16;  // Lance's stride_spatial, the same for both streams
    const int ratios[6][2] = {{21, 9}, {16, 9}, {4, 3}, {1, 1}, {3, 4}, {9, 16}};
    std::vector<Bucket> out;
    for (const auto& r : ratios) {
        const double ar = static_cast<double>(r[0]) / r[1];
        const double w1 = static_cast<double>(round_half_even(std::sqrt(max_area * ar) / f) * f);
        const double h1 = static_cast<double>(round_half_even(w1 / ar / f) * f);
        const double r1 = w1 / h1, a1 = w1 * h1;
        const double h2 = static_cast<double>(round_half_even(std::sqrt(max_area / ar) / f) * f);
        const double w2 = static_cast<double>(round_half_even(h2 * ar / f) * f);
        const double r2 = w2 / h2, a2 = w2 * h2;
        double w, h;
        if (std::abs(r1 - ar) < std::abs(r2 - ar)) {
            w = w1, h = h1;
        } else if (std::abs(r1 - ar) > std::abs(r2 - ar)) {
            w = w2, h = h2;
        } else if (std::abs(a1 - max_area) <= std::abs(a2 - max_area)) {
            w = w1, h = h1;
        } else {
            w = w2, h = h2;
        }
        out.push_back({static_cast<int>(h), static_cast<int>(w), w / h});
    }
    return out;
}

size_t nearest_bucket(const std::vector<Bucket>& buckets, int width, int height) {
    const double r = static_cast<double>(width) / height;
    size_t best = 0;
    for (size_t i = 1; i < buckets.size(); ++i)
        if (std::abs(r - buckets[i].ratio) < std::abs(r - buckets[best].ratio)) best = i;
    return best;
}

CropBox bucket_crop_box(int width, int height, const Bucket& b) {
    const double area = static_cast<double>(width) * height;
    // torch draws the ratio as exp(uniform(log r, log r)) in float32.
    const float log_r = static_cast<float>(std::log(b.ratio));
    const double aspect = static_cast<double>(std::exp(log_r));
    const int64_t w = round_half_even(std::sqrt(area * aspect));
    const int64_t h = round_half_even(std::sqrt(area / aspect));
    CropBox c;
    if (w > 0 && w <= width && h > 0 && h <= height) {
        c.width = static_cast<int>(w), c.height = static_cast<int>(h);
    } else {
        const double in_ratio = static_cast<double>(width) / height;
        if (in_ratio < b.ratio) {
            c.width = width;
            c.height = static_cast<int>(round_half_even(width / b.ratio));
        } else if (in_ratio > b.ratio) {
            c.height = height;
            c.width = static_cast<int>(round_half_even(height * b.ratio));
        } else {
            c.width = width, c.height = height;
        }
    }
    c.height = std::clamp(c.height, 1, height);
    c.width = std::clamp(c.width, 1, width);
    c.top = (height - c.height) / 2;
    c.left = (width - c.width) / 2;
    return c;
}

CropBox divisible_crop_box(int width, int height, int factor) {
    CropBox c;
    c.height = height - height % factor;
    c.width = width - width % factor;
    if (c.height <= 0 || c.width <= 0)
        fail("image of ", width, "x", height, " is smaller than the crop multiple ", factor);
    c.top = static_cast<int>(round_half_even((height - c.height) / 2.0));
    c.left = static_cast<int>(round_half_even((width - c.width) / 2.0));
    return c;
}

ImageRGB8 crop_image(const ImageRGB8& img, const CropBox& b) {
    if (b.top < 0 || b.left < 0 || b.top + b.height > img.height || b.left + b.width > img.width ||
        b.width <= 0 || b.height <= 0)
        fail("crop box outside the ", img.width, "x", img.height, " image");
    if (b.top == 0 && b.left == 0 && b.width == img.width && b.height == img.height) return img;
    ImageRGB8 out(b.width, b.height);
    for (int y = 0; y < b.height; ++y)
        std::memcpy(out.row(y), img.row(b.top + y) + 3 * b.left, static_cast<size_t>(b.width) * 3);
    return out;
}

ImageRGB8 resize_bicubic_pillow(const ImageRGB8& in, int out_w, int out_h) {
    if (out_w <= 0 || out_h <= 0) fail("resize to ", out_w, "x", out_h, ": empty size");
    const bool need_h = out_w != in.width, need_v = out_h != in.height;
    if (!need_h && !need_v) return in;
    const Taps tv = pillow_taps(in.height, out_h);
    // Only the source rows the vertical pass reads go through the horizontal pass.
    const int y_first = tv.first[0];
    const int y_last =
        tv.first[static_cast<size_t>(out_h) - 1] + tv.count[static_cast<size_t>(out_h) - 1];
    ImageRGB8 tmp;
    const ImageRGB8* src = &in;
    int row_offset = 0;  // source row r of the vertical pass is src row (r - row_offset)
    if (need_h) {
        const Taps th = pillow_taps(in.width, out_w);
        tmp = ImageRGB8(out_w, y_last - y_first);
        // Rows are independent and each is computed the same way on any thread: bit-identical.
        default_pool().parallel_for(static_cast<size_t>(tmp.height), [&](size_t b, size_t e) {
            for (int y = static_cast<int>(b); y < static_cast<int>(e); ++y) {
                const uint8_t* line = in.row(y + y_first);
                uint8_t* dst = tmp.row(y);
                for (int xx = 0; xx < out_w; ++xx) {
                    const int x0 = th.first[static_cast<size_t>(xx)];
                    const int n = th.count[static_cast<size_t>(xx)];
                    const int32_t* k = th.k.data() + static_cast<size_t>(xx) * th.ksize;
                    // int32 as in Pillow: |sum| < 2^21 + 255 * 1.3 * 2^22 < 2^31.
                    int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
                    for (int x = 0; x < n; ++x) {
                        const uint8_t* p = line + 3 * (x0 + x);
                        s0 += p[0] * k[x];
                        s1 += p[1] * k[x];
                        s2 += p[2] * k[x];
                    }
                    dst[3 * xx] = clip8(s0);
                    dst[3 * xx + 1] = clip8(s1);
                    dst[3 * xx + 2] = clip8(s2);
                }
            }
        });
        src = &tmp;
        row_offset = y_first;
    }
    if (!need_v) return tmp;
    ImageRGB8 out(src->width, out_h);
    const int W = src->width;
    ThreadPool& pool = default_pool();
    // One accumulator row per share, allocated here: pool jobs must not throw.
    std::vector<int32_t> acc_all(pool.size() * static_cast<size_t>(W) * 3);
    pool.run([&](size_t t, size_t nt) {
        int32_t* acc = acc_all.data() + t * static_cast<size_t>(W) * 3;
        const int b = static_cast<int>(static_cast<size_t>(out_h) * t / nt);
        const int e = static_cast<int>(static_cast<size_t>(out_h) * (t + 1) / nt);
        for (int yy = b; yy < e; ++yy) {
            const int y0 = tv.first[static_cast<size_t>(yy)] - row_offset;
            const int n = tv.count[static_cast<size_t>(yy)];
            const int32_t* k = tv.k.data() + static_cast<size_t>(yy) * tv.ksize;
            std::fill(acc, acc + W * 3, int32_t{1} << (kPrecisionBits - 1));
            // Row by row (per pixel the same sums in the same order as Pillow's column loop;
            // integer addition is exact anyway).
            for (int y = 0; y < n; ++y) accumulate_row(acc, src->row(y0 + y), k[y], W * 3);
            uint8_t* dst = out.row(yy);
            for (int i = 0; i < W * 3; ++i) dst[i] = clip8(acc[i]);
        }
    });
    return out;
}

FrameTransform::FrameTransform(const StreamSpec& spec, int in_width, int in_height)
    : in_w_(in_width), in_h_(in_height) {
    if (in_width <= 0 || in_height <= 0)
        fail("cannot preprocess an image of ", in_width, "x", in_height);
    const std::vector<Bucket> buckets = lance_buckets(spec.resolution);
    bucket_ = buckets[nearest_bucket(buckets, in_width, in_height)];
    crop_ = bucket_crop_box(in_width, in_height, bucket_);
    final_ = divisible_crop_box(bucket_.width, bucket_.height, spec.divisible);
}

ImageRGB8 FrameTransform::apply(const ImageRGB8& frame) const {
    if (frame.width != in_w_ || frame.height != in_h_)
        fail("frame of ", frame.width, "x", frame.height, " in a video of ", in_w_, "x", in_h_);
    const ImageRGB8 resized =
        resize_bicubic_pillow(crop_image(frame, crop_), bucket_.width, bucket_.height);
    return crop_image(resized, final_);
}

void normalize_frame(const ImageRGB8& img, const StreamSpec& spec, PixelTensor* out, int64_t t) {
    const int64_t H = out->H, W = out->W, plane = out->T * H * W;
    if (img.width != W || img.height != H || t < 0 || t >= out->T)
        fail("normalize_frame: frame ", img.width, "x", img.height, " does not fit [3, ", out->T,
             ", ", H, ", ", W, "]");
    for (int c = 0; c < 3; ++c) {
        float* dst = out->data.data() + c * plane + t * H * W;
        const float mean = spec.mean[c], std = spec.std[c];
        for (int64_t i = 0; i < H * W; ++i) {
            const float v = static_cast<float>(img.rgb[static_cast<size_t>(3 * i + c)]) / 255.0f;
            dst[i] = (v - mean) / std;
        }
    }
}

namespace {

PixelTensor alloc_pixels(int64_t T, int64_t H, int64_t W) {
    PixelTensor p;
    p.T = T, p.H = H, p.W = W;
    p.data.assign(static_cast<size_t>(3 * T * H * W), 0.0f);
    return p;
}

// Copies frame `from` to frame `to` in every channel (the ViT's repeat and odd-count padding).
void copy_frame(PixelTensor* p, int64_t from, int64_t to) {
    const int64_t hw = p->H * p->W, plane = p->T * hw;
    for (int c = 0; c < 3; ++c)
        std::memcpy(p->data.data() + c * plane + to * hw, p->data.data() + c * plane + from * hw,
                    static_cast<size_t>(hw) * sizeof(float));
}

}  // namespace

PreprocessResult preprocess_image(const ImageRGB8& img, const std::string& preset,
                                  VisionStream stream) {
    const StreamSpec spec = stream_spec(preset, stream);
    const FrameTransform tf(spec, img.width, img.height);
    PreprocessResult r;
    r.source_width = img.width, r.source_height = img.height;
    r.bucket = tf.bucket();
    r.first_frame = tf.apply(img);
    const int64_t T = stream == VisionStream::Vit ? 2 : 1;  // an image is two ViT frames
    r.pixels = alloc_pixels(T, tf.out_height(), tf.out_width());
    normalize_frame(r.first_frame, spec, &r.pixels, 0);
    if (T == 2) copy_frame(&r.pixels, 0, 1);
    return r;
}

PreprocessResult preprocess_video(const std::string& path, const std::string& preset,
                                  VisionStream stream, const VideoReadOptions& opts) {
    const StreamSpec spec = stream_spec(preset, stream);
    // A still image given as a video is Lance's image element (FFmpeg would open a PNG as a
    // one-frame stream but drop its alpha instead of compositing it onto white).
    if (file_is_image(path)) {
        ImageReadOptions io;
        io.max_pixels = opts.max_pixels;
        PreprocessResult r = preprocess_image(read_image(path, io), preset, stream);
        r.frame_indices = {0};
        return r;
    }
    VideoReader reader(path, opts);
    const VideoInfo& info = reader.info();
    const FrameSampling s = lance_sample_frames(info.frame_count, info.avg_fps);
    const FrameTransform tf(spec, info.width, info.height);
    const int64_t n = static_cast<int64_t>(s.indices.size());
    const int64_t T = (stream == VisionStream::Vit && n % 2 == 1) ? n + 1 : n;
    PreprocessResult r;
    r.source_width = info.width, r.source_height = info.height;
    r.bucket = tf.bucket();
    r.frame_indices = s.indices;
    r.pixels = alloc_pixels(T, tf.out_height(), tf.out_width());
    using Clock = std::chrono::steady_clock;
    double transform_s = 0;
    const auto t0 = Clock::now();
    reader.read_frames(s.indices, [&](size_t k, const ImageRGB8& frame) {
        const auto t1 = Clock::now();
        ImageRGB8 out = tf.apply(frame);
        normalize_frame(out, spec, &r.pixels, static_cast<int64_t>(k));
        if (k == 0) r.first_frame = std::move(out);
        transform_s += std::chrono::duration<double>(Clock::now() - t1).count();
    });
    r.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count() - transform_s;
    if (T > n) copy_frame(&r.pixels, n - 1, n);  // odd ViT count: repeat the last frame
    return r;
}

}  // namespace lancet
