// Every op of the op layer (kernels/ops.h) on every ISA path against the float64 reference
// (kernels/ops_ref.h), in the style of llama.cpp's test-backend-ops: ONE table of cases
// (all_cases() below); each case runs on every ISA this CPU has (others SKIP visibly) with
// thread pools of 1, 2 and 3, must stay within its error bound on every element (the worst
// element is reported) and must give bit-identical output for 1, 2 and 3 threads.
// Adding an op or a shape is one entry in all_cases(); adding an ISA is one entry in kIsas.
//
// Error bounds (u = 2^-24, the f32 unit roundoff), per output element, derived from the
// reduction length and the magnitudes of what is summed:
//  - dot products of length K (linear, conv3d, attention scores): (K + 2)·u·Σ|a·b| (any
//    summation order, fma or not; Higham's γ_K) plus u·|y| for the final rounding;
//  - W4A8 linear additionally Σ_i |w_i|·(d_i/2 + 4u|x_i|), d_i = max|x| / 127 of i's block;
//  - bf16 activations (linear, conv3d on BF16 weights): x̃ = bf16(x) has |x̃ - x| <= 2^-8|x|
//    (round to nearest with 8 significand bits), so Σ w·x̃ is off by at most 2^-8·Σ|w·x|; the
//    f32 sum of the products w·x̃ adds (K + 2)·u·Σ|w·x̃| <= (K + 2)·u·(1 + 2^-8)·Σ|w·x|; and
//    vdpbf16ps' flush of denormal inputs drops at most 2^-126·Σ|w|;
//  - row/elementwise ops: a few u of the result for each rounded step (listed at each case);
//  - attention: the score errors Δs perturb each probability by ≤ 2·max Δs (+ exp's error),
//    which moves the output by at most that relative amount of Σ p·|v|, plus the rounding of
//    the p·v sums ((L + hd + 16)·u·Σ p·|v|);
//  - bf16 attention (ops.h, AttnPrecision::Bf16), ε = 2^-8 (8 significand bits): against the exact
//  inputs, the
//    documented bound (q̃k̃ within 2ε + ε² of qk in the scores, p̃ and ṽ within ε each); against
//    the float64 attention of the bf16-rounded q̃, k̃, ṽ, the f32 bound with one more rounding in
//    the scores (the scale) and ε for p̃ — tight enough that unrounded inputs would fail it.
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/ops_ref.h"

namespace lancet::kernels {
namespace {

constexpr double u = 0x1p-24;
constexpr Isa kIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx};

ThreadPool& pool_of(size_t threads) {
    static ThreadPool p1(1), p2(2), p3(3);
    return threads == 1 ? p1 : threads == 2 ? p2 : p3;
}

// Non-zero values of both signs, magnitudes in [0.1, 1)·scale.
std::vector<float> rand_vec(size_t n, uint64_t seed, float scale = 1.0f) {
    Rng rng(seed);
    std::vector<float> v(n);
    for (float& x : v) {
        const float m = 0.1f + 0.9f * rng.unit_float();
        x = (rng.next_u64() & 1 ? m : -m) * scale;
    }
    return v;
}

std::vector<double> f64(const std::vector<float>& v) { return {v.begin(), v.end()}; }

int64_t I(size_t v) { return static_cast<int64_t>(v); }

// One row of the table: an op at one shape and configuration.
class OpCase {
  public:
    virtual ~OpCase() = default;
    virtual std::string name() const = 0;
    virtual ActMode act() const { return ActMode::F32; }
    virtual Bf16Act bf16_act() const { return Bf16Act::F32; }
    virtual AttnPrecision attn() const { return AttnPrecision::F32; }
    // Whether the worst element's ratio to its bound is printed on success too.
    virtual bool report_worst() const { return false; }
    // Runs the op under ctx on the case's (unchanged) inputs; returns the output.
    virtual std::vector<float> run(const OpContext& ctx) = 0;
    // The float64 result and the allowed |error| of each output element.
    virtual void reference(std::vector<double>& want, std::vector<double>& bound) = 0;
};

using CasePtr = std::shared_ptr<OpCase>;

// ---- linear ----------------------------------------------------------------------------------

struct WeightData {
    WeightType type;
    size_t out, in, gs;
    std::vector<float> f32;
    std::vector<uint16_t> bf16, scales;
    std::vector<uint8_t> q, zeros;
    WeightView view() const {
        switch (type) {
            case WeightType::F32:
                return WeightView::from_f32(f32.data(), out, in);
            case WeightType::BF16:
                return WeightView::from_bf16(bf16.data(), out, in);
            case WeightType::Int5:
                return WeightView::from_awq_int5(q.data(), scales.data(), zeros.data(), out, in,
                                                 gs);
            case WeightType::Nvfp4:
                return WeightView::from_nvfp4(q.data(), scales.data(), out, in);
            case WeightType::Q4:
                break;
        }
        return WeightView::from_awq_int4(q.data(), scales.data(), zeros.data(), out, in, gs);
    }
};

WeightData make_weight(WeightType type, size_t out, size_t in, size_t gs, uint64_t seed) {
    WeightData w{type, out, in, gs, {}, {}, {}, {}, {}};
    const auto v = rand_vec(out * in, seed, 0.5f);
    if (type == WeightType::F32) w.f32 = v;
    if (type == WeightType::BF16)
        for (float x : v) w.bf16.push_back(f32_to_bf16(x));
    if (type == WeightType::Int5) {  // spec §1.2: one code 0..31 per byte
        Rng rng(seed);
        w.q.resize(out * in);
        for (auto& b : w.q) b = static_cast<uint8_t>(rng.below(32));
        for (size_t i = 0; i < out * (in / gs); ++i) {
            w.scales.push_back(f32_to_bf16(0.005f + 0.025f * rng.unit_float()));
            w.zeros.push_back(static_cast<uint8_t>(rng.below(32)));
        }
    }
    if (type == WeightType::Nvfp4) {  // spec §1.3: every E2M1 code, a bf16 scale per 16 columns
        Rng rng(seed);
        w.q.resize(out * in / 2);
        for (auto& b : w.q) b = static_cast<uint8_t>(rng.below(256));
        for (size_t i = 0; i < out * (in / kNvfp4Block); ++i)
            w.scales.push_back(f32_to_bf16(0.01f + 0.08f * rng.unit_float()));
    }
    if (type == WeightType::Q4) {
        Rng rng(seed);
        w.q.resize(out * in / 2);
        for (auto& b : w.q) b = static_cast<uint8_t>(rng.below(256));
        for (size_t i = 0; i < out * (in / gs); ++i) {
            w.scales.push_back(f32_to_bf16(0.01f + 0.05f * rng.unit_float()));
            w.zeros.push_back(static_cast<uint8_t>(rng.below(16)));
        }
    }
    return w;
}

class LinearCase : public OpCase {
  public:
    LinearCase(size_t n, size_t in, size_t out, WeightType type, size_t gs, ActMode act,
               bool strided, bool bias, Bf16Act bf16_act = Bf16Act::F32)
        : n_(n),
          in_(in),
          out_(out),
          gs_(gs),
          act_(act),
          bf16_act_(bf16_act),
          strided_(strided),
          has_bias_(bias),
          wd_(make_weight(type, out, in, gs, 100 + n * 7 + in)),
          w_(wd_.view()),
          x_(rand_vec(n * ldx(), 200 + n + in)),
          bias_(rand_vec(out, 300 + out)) {}
    std::string name() const override {
        std::ostringstream s;
        const bool grouped = wd_.type == WeightType::Q4 || wd_.type == WeightType::Int5;
        s << "linear_" << weight_type_name(wd_.type) << (grouped ? "g" : "")
          << (grouped ? std::to_string(gs_) : "") << "_n" << n_ << "_in" << in_ << "_out" << out_
          << (act_ == ActMode::Int8   ? "_w4a8"
              : act_ == ActMode::Bf16 ? "_a16"
                                      : "")
          << (bf16_act_ == Bf16Act::Bf16 ? "_bf16act" : "") << (strided_ ? "_strided" : "")
          << (has_bias_ ? "_bias" : "");
        return s.str();
    }
    ActMode act() const override { return act_; }
    Bf16Act bf16_act() const override { return bf16_act_; }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> y(n_ * ldy(), 7.0f);
        TensorRef x = TensorRef::contiguous(x_.data(), {I(n_), I(ldx())}).slice(1, 0, I(in_));
        TensorRef yr = TensorRef::contiguous(y.data(), {I(n_), I(ldy())}).slice(1, 0, I(out_));
        linear(ctx, x, lw(), has_bias_ ? bias_.data() : nullptr, yr);
        std::vector<float> o(n_ * out_);
        for (size_t r = 0; r < n_; ++r)
            for (size_t j = 0; j < ldy(); ++j)
                if (j < out_)
                    o[r * out_ + j] = y[r * ldy() + j];
                else
                    EXPECT_EQ(y[r * ldy() + j], 7.0f) << "wrote past the view";
        return o;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        std::vector<double> x(n_ * in_), b = f64(bias_);
        for (size_t r = 0; r < n_; ++r)
            for (size_t i = 0; i < in_; ++i) x[r * in_ + i] = x_[r * ldx() + i];
        want.resize(n_ * out_);
        bound.resize(n_ * out_);
        ref::linear(x.data(), n_, w_, has_bias_ ? b.data() : nullptr, want.data());
        const size_t kb = gs_ ? w4a8_block(gs_) : 1;
        for (size_t r = 0; r < n_; ++r)
            for (size_t o = 0; o < out_; ++o) {
                double mag = has_bias_ ? std::fabs(b[o]) : 0.0, quant = 0;
                for (size_t i = 0; i < in_; ++i) {
                    const double wi = std::fabs(weight_ref(w_, o, i)), xi = x[r * in_ + i];
                    mag += std::fabs(xi) * factored_magnitude(o, i, wi);
                    if (bf16_act_ == Bf16Act::Bf16)
                        quant += wi * (0x1p-8 * std::fabs(xi) * (1 + (in_ + 2) * u) + 0x1p-126);
                    // INT4 with bf16 activations: w̃ and x̃ each within 2^-8 relative, so
                    // |w̃x̃ - wx| <= (2^-7 + 2^-16)|wx|; the f32 sum's γ_K acts on |w̃x̃| (the
                    // part beyond |wx| added here); denormal w̃ or x̃ flushed to zero.
                    if (act_ == ActMode::Bf16)
                        quant += wi * std::fabs(xi) * (0x1p-7 + 0x1p-16) * (1 + (in_ + 2) * u) +
                                 0x1p-126 * (wi + std::fabs(xi));
                    if (act_ == ActMode::Int8) {
                        double amax = 0;
                        for (size_t k = i / kb * kb; k < (i / kb + 1) * kb; ++k)
                            amax = std::max(amax, std::fabs(x[r * in_ + k]));
                        quant += wi * (amax / 127 / 2 * (1 + 8 * u) + 4 * u * std::fabs(xi));
                    }
                }
                const double y = want[r * out_ + o];
                bound[r * out_ + o] = (in_ + 2) * u * mag + quant + u * std::fabs(y) + 1e-30;
            }
    }

  private:
    // The INT5 and (AVX2) NVFP4 GEMV kernels sum w = (q - z) * s per group as s * sum(q x) -
    // z s * sum(x) (NVFP4: q = value + 6, z = 6, groups of 16), so a term's roundings act on
    // |q s| + |z s| rather than |w|; at most gs + 2G + 1 <= in + 2 of them for these cases.
    double factored_magnitude(size_t o, size_t i, double wi) const {
        const size_t groups = wd_.type == WeightType::Nvfp4 ? in_ / kNvfp4Block : 0;
        if (wd_.type == WeightType::Int5) {
            const size_t g = i / gs_, ng = in_ / gs_;
            const double s = bf16_to_f32(wd_.scales[o * ng + g]);
            return (wd_.q[o * in_ + i] + wd_.zeros[o * ng + g]) * s;
        }
        if (wd_.type == WeightType::Nvfp4) {
            const double s = bf16_to_f32(wd_.scales[o * groups + i / kNvfp4Block]);
            return std::fabs(weight_ref(w_, o, i) / s + 6) * s + 6 * s;
        }
        return wi;
    }
    size_t ldx() const { return strided_ ? in_ + 3 : in_; }
    size_t ldy() const { return strided_ ? out_ + 5 : out_; }
    size_t n_, in_, out_, gs_;
    ActMode act_;
    Bf16Act bf16_act_;
    bool strided_, has_bias_;
    WeightData wd_;
    WeightView w_;
    LinearWeight lw_cache_;
    std::vector<float> x_, bias_;
    // Built lazily: the repack runs on the default pool.
    const LinearWeight& lw() {
        if (lw_cache_.in() == 0) lw_cache_ = LinearWeight(w_);
        return lw_cache_;
    }
};

// ---- rows and elementwise --------------------------------------------------------------------

// rms_norm over rows of a [rows, dim] view of a wider buffer (row stride dim + pad), in place or
// not.
class RmsNormCase : public OpCase {
  public:
    RmsNormCase(size_t rows, size_t dim, bool weight, float eps, size_t pad, bool in_place)
        : rows_(rows),
          dim_(dim),
          weight_(weight),
          eps_(eps),
          pad_(pad),
          in_place_(in_place),
          x_(rand_vec(rows * (dim + pad), 11 + rows * dim, 3.0f)),
          w_(rand_vec(dim, 12 + dim)) {}
    std::string name() const override {
        return "rms_norm_r" + std::to_string(rows_) + "_d" + std::to_string(dim_) +
               (weight_ ? "_w" : "") + "_eps" +
               std::to_string(static_cast<int>(-std::log10(eps_))) + (pad_ ? "_strided" : "") +
               (in_place_ ? "_inplace" : "");
    }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> x = x_, y(rows_ * (dim_ + pad_), 0.0f);
        const TensorRef xr =
            TensorRef::contiguous(x.data(), {I(rows_), I(dim_ + pad_)}).slice(1, 0, I(dim_));
        const TensorRef yr =
            in_place_
                ? xr
                : TensorRef::contiguous(y.data(), {I(rows_), I(dim_ + pad_)}).slice(1, 0, I(dim_));
        rms_norm(ctx, xr, weight_ ? w_.data() : nullptr, eps_, yr);
        std::vector<float> o(rows_ * dim_);
        for (size_t r = 0; r < rows_; ++r)
            for (size_t i = 0; i < dim_; ++i)
                o[r * dim_ + i] = (in_place_ ? x : y)[r * (dim_ + pad_) + i];
        return o;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        std::vector<double> x(rows_ * dim_);
        for (size_t r = 0; r < rows_; ++r)
            for (size_t i = 0; i < dim_; ++i) x[r * dim_ + i] = x_[r * (dim_ + pad_) + i];
        const auto w = f64(w_);
        want.resize(x.size());
        ref::rms_norm(x.data(), rows_, dim_, weight_ ? w.data() : nullptr, eps_, want.data());
        // inv rounded to f32 (u, after a double sum), two f32 products (2u): 4u of |y|.
        bound.resize(x.size());
        for (size_t i = 0; i < x.size(); ++i) bound[i] = 4 * u * std::fabs(want[i]) + 1e-30;
    }

  private:
    size_t rows_, dim_;
    bool weight_;
    float eps_;
    size_t pad_;
    bool in_place_;
    std::vector<float> x_, w_;
};

// channel_rms_norm over x [T, H, W, C] (dim 3), or the same values laid out channels-first
// [C, T, H, W] (dim 0).
class ChannelRmsNormCase : public OpCase {
  public:
    ChannelRmsNormCase(size_t pixels, size_t c, bool bias, bool channels_first)
        : p_(pixels),
          c_(c),
          bias_(bias),
          first_(channels_first),
          x_(rand_vec(pixels * c, 21 + pixels * c, 2.0f)),
          g_(rand_vec(c, 22 + c)),
          b_(rand_vec(c, 23 + c)) {}
    std::string name() const override {
        return "channel_rms_norm_p" + std::to_string(p_) + "_c" + std::to_string(c_) +
               (bias_ ? "_bias" : "") + (first_ ? "_channels_first" : "");
    }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> y(p_ * c_);
        if (!first_) {
            const int64_t t = 1, h = 1, w = I(p_);
            channel_rms_norm(ctx, TensorRef::contiguous(x_.data(), {t, h, w, I(c_)}), 3, g_.data(),
                             bias_ ? b_.data() : nullptr,
                             TensorRef::contiguous(y.data(), {t, h, w, I(c_)}));
            return y;
        }
        std::vector<float> xc(p_ * c_), yc(p_ * c_);
        for (size_t p = 0; p < p_; ++p)
            for (size_t c = 0; c < c_; ++c) xc[c * p_ + p] = x_[p * c_ + c];
        channel_rms_norm(ctx, TensorRef::contiguous(xc.data(), {I(c_), 1, 1, I(p_)}), 0, g_.data(),
                         bias_ ? b_.data() : nullptr,
                         TensorRef::contiguous(yc.data(), {I(c_), 1, 1, I(p_)}));
        for (size_t p = 0; p < p_; ++p)
            for (size_t c = 0; c < c_; ++c) y[p * c_ + c] = yc[c * p_ + p];
        return y;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        const auto x = f64(x_), g = f64(g_), b = f64(b_);
        want.resize(x.size());
        ref::channel_rms_norm(x.data(), p_, c_, g.data(), bias_ ? b.data() : nullptr, want.data());
        // inv (√C / ‖x‖ rounded to f32: u), two products (2u), the bias add (u of the sum).
        bound.resize(x.size());
        for (size_t i = 0; i < x.size(); ++i) {
            const double core = want[i] - (bias_ ? b[i % c_] : 0.0);
            bound[i] = 4 * u * std::fabs(core) + u * std::fabs(want[i]) + 1e-30;
        }
    }

  private:
    size_t p_, c_;
    bool bias_, first_;
    std::vector<float> x_, g_, b_;
};

enum class Unary { Silu, Gelu };

// silu / gelu over [rows, cols] (y aliasing x when in_place).
class UnaryCase : public OpCase {
  public:
    UnaryCase(Unary op, size_t rows, size_t cols, bool in_place)
        : op_(op),
          rows_(rows),
          cols_(cols),
          in_place_(in_place),
          x_(rand_vec(rows * cols, 31 + rows * cols, 6.0f)) {}
    std::string name() const override {
        return std::string(op_ == Unary::Silu ? "silu" : "gelu") + "_" + std::to_string(rows_) +
               "x" + std::to_string(cols_) + (in_place_ ? "_inplace" : "");
    }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> x = x_, y(x.size());
        const TensorRef xr = TensorRef::matrix(x.data(), rows_, cols_);
        const TensorRef yr = in_place_ ? xr : TensorRef::matrix(y.data(), rows_, cols_);
        if (op_ == Unary::Silu)
            silu(ctx, xr, yr);
        else
            gelu(ctx, xr, yr);
        return in_place_ ? x : y;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        want.resize(x_.size());
        bound.resize(x_.size());
        for (size_t i = 0; i < x_.size(); ++i) {
            const double x = x_[i];
            if (op_ == Unary::Silu) {
                want[i] = ref::silu(x);
                // expf (≤ 2 ulp), 1 + e, the division: 6u of |y|.
                bound[i] = 6 * u * std::fabs(want[i]) + 1e-30;
            } else {
                want[i] = ref::gelu(x);
                // erff's absolute error (≤ 2u) and x/√2's rounding (2u relative, times erf's
                // slope ≤ 1.13·|x|/√2) act on 1 + erf, scaled by |x|/2; then two products.
                bound[i] = 4 * u * std::fabs(want[i]) +
                           0.5 * std::fabs(x) * (4 * u + 2 * u * std::fabs(x)) + 1e-30;
            }
        }
    }

  private:
    Unary op_;
    size_t rows_, cols_;
    bool in_place_;
    std::vector<float> x_;
};

class SiluMulCase : public OpCase {
  public:
    SiluMulCase(size_t rows, size_t cols)
        : rows_(rows),
          cols_(cols),
          g_(rand_vec(rows * cols, 41 + cols, 6.0f)),
          up_(rand_vec(rows * cols, 42 + cols)) {}
    std::string name() const override {
        return "silu_mul_" + std::to_string(rows_) + "x" + std::to_string(cols_);
    }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> y(g_.size());
        silu_mul(ctx, TensorRef::matrix(g_.data(), rows_, cols_),
                 TensorRef::matrix(up_.data(), rows_, cols_),
                 TensorRef::matrix(y.data(), rows_, cols_));
        return y;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        want.resize(g_.size());
        bound.resize(g_.size());
        for (size_t i = 0; i < g_.size(); ++i) {
            want[i] = ref::silu(g_[i]) * up_[i];
            bound[i] = 7 * u * std::fabs(want[i]) + 1e-30;  // silu's 6u and the product
        }
    }

  private:
    size_t rows_, cols_;
    std::vector<float> g_, up_;
};

// y = a + b with b [rows, cols], [1, cols] or [rows, 1].
class AddCase : public OpCase {
  public:
    AddCase(size_t rows, size_t cols, size_t b_rows, size_t b_cols)
        : rows_(rows),
          cols_(cols),
          br_(b_rows),
          bc_(b_cols),
          a_(rand_vec(rows * cols, 51 + cols)),
          b_(rand_vec(std::max<size_t>(b_rows, 1) * b_cols, 52 + cols)) {}
    std::string name() const override {
        return "add_" + std::to_string(rows_) + "x" + std::to_string(cols_) + "_b" +
               std::to_string(br_) + "x" + std::to_string(bc_);
    }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> y(a_.size());
        const TensorRef b = br_ ? TensorRef::matrix(b_.data(), br_, bc_)
                                : TensorRef::contiguous(b_.data(), {I(bc_)});
        add(ctx, TensorRef::matrix(a_.data(), rows_, cols_), b,
            TensorRef::matrix(y.data(), rows_, cols_));
        return y;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        want.resize(a_.size());
        bound.resize(a_.size());
        for (size_t r = 0; r < rows_; ++r)
            for (size_t c = 0; c < cols_; ++c) {
                const size_t i = r * cols_ + c;
                want[i] = double(a_[i]) + b_[(br_ <= 1 ? 0 : r) * bc_ + (bc_ == 1 ? 0 : c)];
                bound[i] = u * std::fabs(want[i]);
            }
    }

  private:
    size_t rows_, cols_, br_, bc_;
    std::vector<float> a_, b_;
};

class UpsampleCase : public OpCase {
  public:
    UpsampleCase(size_t t, size_t h, size_t w, size_t c)
        : t_(t), h_(h), w_(w), c_(c), x_(rand_vec(t * h * w * c, 61 + c)) {}
    std::string name() const override {
        return "upsample_nearest2x_" + std::to_string(t_) + "x" + std::to_string(h_) + "x" +
               std::to_string(w_) + "x" + std::to_string(c_);
    }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> y(4 * x_.size());
        upsample_nearest2x(ctx, TensorRef::contiguous(x_.data(), {I(t_), I(h_), I(w_), I(c_)}),
                           TensorRef::contiguous(y.data(), {I(t_), I(2 * h_), I(2 * w_), I(c_)}));
        return y;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        want.clear();
        for (size_t t = 0; t < t_; ++t)
            for (size_t y = 0; y < 2 * h_; ++y)
                for (size_t x = 0; x < 2 * w_; ++x)
                    for (size_t c = 0; c < c_; ++c)
                        want.push_back(x_[((t * h_ + y / 2) * w_ + x / 2) * c_ + c]);
        bound.assign(want.size(), 0.0);  // a copy: exact
    }

  private:
    size_t t_, h_, w_, c_;
    std::vector<float> x_;
};

// ---- rope ------------------------------------------------------------------------------------

enum class RopeForm { OneD, Mrope, TwoD };

class RopeCase : public OpCase {
  public:
    RopeCase(RopeForm form, size_t n, size_t heads, size_t hd, size_t head_pad)
        : form_(form),
          n_(n),
          heads_(heads),
          hd_(hd),
          pad_(head_pad),
          x_(rand_vec(n * heads * (hd + head_pad), 71 + n * hd, 2.0f)) {
        Rng rng(72 + n);
        for (size_t r = 0; r < n; ++r) {
            const int64_t base = static_cast<int64_t>(rng.below(5000));
            p1_.push_back(base);
            p3_.push_back({base, base + static_cast<int64_t>(rng.below(40)),
                           static_cast<int64_t>(rng.below(40))});
            p2_.push_back(
                {static_cast<int64_t>(rng.below(64)), static_cast<int64_t>(rng.below(64))});
        }
        const size_t half = hd / 2;
        section_ = {static_cast<int>(half / 4), static_cast<int>(half / 4 + (half % 4 + 1) / 2), 0};
        section_[2] = static_cast<int>(half) - section_[0] - section_[1];
    }
    std::string name() const override {
        const char* f = form_ == RopeForm::OneD ? "1d" : form_ == RopeForm::Mrope ? "mrope" : "2d";
        return std::string("rope_") + f + "_n" + std::to_string(n_) + "_h" +
               std::to_string(heads_) + "_hd" + std::to_string(hd_) +
               (pad_ ? "_strided_heads" : "");
    }
    std::vector<float> run(const OpContext& ctx) override {
        RopeTable t;
        if (form_ == RopeForm::OneD) rope_angles_1d(p1_.data(), n_, hd_, 1e4, t);
        if (form_ == RopeForm::Mrope) rope_angles_mrope(p3_.data(), n_, hd_, section_, 1e6, t);
        if (form_ == RopeForm::TwoD) rope_angles_2d(p2_.data(), n_, hd_, 1e4, t);
        std::vector<float> x = x_;
        rope(ctx,
             TensorRef::contiguous(x.data(), {I(n_), I(heads_), I(hd_ + pad_)}).slice(2, 0, I(hd_)),
             t);
        std::vector<float> o;
        for (size_t r = 0; r < n_ * heads_; ++r)
            for (size_t i = 0; i < hd_ + pad_; ++i) {
                if (i < hd_)
                    o.push_back(x[r * (hd_ + pad_) + i]);
                else
                    EXPECT_EQ(x[r * (hd_ + pad_) + i], x_[r * (hd_ + pad_) + i]);
            }
        return o;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        std::vector<double> ang;
        if (form_ == RopeForm::OneD) ang = ref::rope_angles_1d(p1_.data(), n_, hd_, 1e4);
        if (form_ == RopeForm::Mrope)
            ang = ref::rope_angles_mrope(p3_.data(), n_, hd_, section_, 1e6);
        if (form_ == RopeForm::TwoD) ang = ref::rope_angles_2d(p2_.data(), n_, hd_, 1e4);
        want.clear();
        for (size_t r = 0; r < n_ * heads_; ++r)
            for (size_t i = 0; i < hd_; ++i) want.push_back(x_[r * (hd_ + pad_) + i]);
        const std::vector<double> x = want;
        ref::rope(want.data(), n_, heads_, hd_, ang);
        // cos and sin rounded to f32 (u each), two products and a sum (3u): 4u of |a| + |b|;
        // angles agree to 1e-12 (both in double).
        bound.resize(want.size());
        const size_t half = hd_ / 2;
        for (size_t i = 0; i < want.size(); ++i) {
            const size_t j = i % hd_, base = i - j, jj = j % half;
            const double m = std::fabs(x[base + jj]) + std::fabs(x[base + jj + half]);
            bound[i] = (4 * u + 1e-12) * m + 1e-30;
        }
    }

  private:
    RopeForm form_;
    size_t n_, heads_, hd_, pad_;
    std::vector<float> x_;
    std::vector<int64_t> p1_;
    std::vector<std::array<int64_t, 3>> p3_;
    std::vector<std::array<int64_t, 2>> p2_;
    std::array<int, 3> section_{};
};

// ---- attention -------------------------------------------------------------------------------

struct MaskSpec {
    AttnMask::Kind kind = AttnMask::Kind::None;
    size_t n_cached = 0;
    std::vector<int32_t> cu;                                          // Segments
    std::vector<std::pair<size_t, AttnSplit>> cached_splits, splits;  // Splits
    std::string label;
};

class AttentionCase : public OpCase {
  public:
    // kv_pad > 0: k/v rows kv_pad floats further apart than hd (the ViT's views of its qkv
    // rows), which attention() copies to dense rows for many query rows.
    // How a Bf16 case is checked: the documented bound against the exact inputs, or the tight
    // one against the bf16-rounded inputs.
    enum class Check { F32, Bf16Exact, Bf16Rounded };
    AttentionCase(MaskSpec m, size_t n, size_t nh, size_t nkv, size_t hd, bool shuffle,
                  float scale = 0.0f, size_t kv_pad = 0, Check check = Check::F32)
        : m_(std::move(m)),
          n_(n),
          nh_(nh),
          nkv_(nkv),
          hd_(hd),
          row_(hd + kv_pad),
          scale_(scale),
          check_(check),
          shuffle_(shuffle) {
        const size_t L = m_.n_cached + n;
        q_ = rand_vec(n * nh * hd, 81 + n * hd, 1.5f);
        cap_ = L + 5;  // a cache with spare capacity: k/v rows are strided views
        kc_ = rand_vec(nkv * cap_ * row_, 82 + L, 1.5f);
        vc_ = rand_vec(nkv * cap_ * row_, 83 + L);
        for (size_t i = 0; i < n; ++i) order_.push_back(static_cast<int32_t>(i));
        if (shuffle)
            for (size_t i = 0; i < n; ++i)
                order_[i] = static_cast<int32_t>(n % 3 == 0 ? n - 1 - i : (i * 3) % n);
        for (auto [len, mode] : m_.cached_splits)
            for (size_t i = 0; i < len; ++i) hidden_.push_back(mode == AttnSplit::Noise);
        for (size_t s = 0; s < m_.splits.size(); ++s) {
            for (size_t i = 0; i < m_.splits[s].first; ++i)
                split_of_.push_back(static_cast<int32_t>(s));
            modes_.push_back(m_.splits[s].second);
            split_end_.push_back(static_cast<int32_t>(split_of_.size()));
        }
        mask_.kind = m_.kind;
        mask_.n_cached = m_.n_cached;
        mask_.cu_seqlens = m_.cu.empty() ? nullptr : m_.cu.data();
        mask_.n_segments = m_.cu.empty() ? 0 : m_.cu.size() - 1;
        mask_.cached_hidden = hidden_.data();
        mask_.split_of = split_of_.data();
        mask_.modes = modes_.data();
        mask_.split_end = split_end_.data();
    }
    std::string name() const override {
        return "attention_" + m_.label + "_P" + std::to_string(m_.n_cached) + "_n" +
               std::to_string(n_) + "_h" + std::to_string(nh_) + "kv" + std::to_string(nkv_) +
               "_hd" + std::to_string(hd_) + (order_.size() && order_[0] != 0 ? "_qperm" : "") +
               (row_ != hd_ ? "_kvrow" + std::to_string(row_) : "") +
               (check_ == Check::Bf16Exact     ? "_bf16"
                : check_ == Check::Bf16Rounded ? "_bf16rounded"
                                               : "");
    }
    // The same case (inputs, mask, shape) under another check.
    AttentionCase* with_check(Check check) const {
        return new AttentionCase(m_, n_, nh_, nkv_, hd_, shuffle_, scale_, row_ - hd_, check);
    }
    AttnPrecision attn() const override {
        return check_ == Check::F32 ? AttnPrecision::F32 : AttnPrecision::Bf16;
    }
    bool report_worst() const override { return check_ != Check::F32; }
    std::vector<float> run(const OpContext& ctx) override {
        const int64_t L = I(m_.n_cached + n_);
        std::vector<float> out(n_ * nh_ * hd_);
        AttentionScratch scratch;
        attention(ctx, TensorRef::contiguous(q_.data(), {I(n_), I(nh_), I(hd_)}), order_.data(),
                  kv_view(kc_.data(), L), kv_view(vc_.data(), L), mask_, scale_,
                  TensorRef::contiguous(out.data(), {I(n_), I(nh_), I(hd_)}), scratch);
        return out;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        const size_t L = m_.n_cached + n_;
        std::vector<double> k(nkv_ * L * hd_), v(nkv_ * L * hd_);
        for (size_t g = 0; g < nkv_; ++g)
            for (size_t a = 0; a < L; ++a)
                for (size_t d = 0; d < hd_; ++d) {
                    k[(g * L + a) * hd_ + d] = kc_[(g * cap_ + a) * row_ + d];
                    v[(g * L + a) * hd_ + d] = vc_[(g * cap_ + a) * row_ + d];
                }
        const double scale =
            scale_ > 0 ? scale_ : double(1.0f / std::sqrt(static_cast<float>(hd_)));
        const bool rounded = check_ == Check::Bf16Rounded;
        auto q = f64(q_);
        if (rounded) {
            for (double& x : q) x = round_bf16(static_cast<float>(x));
            for (double& x : k) x = round_bf16(static_cast<float>(x));
            for (double& x : v) x = round_bf16(static_cast<float>(x));
        }
        want.resize(n_ * nh_ * hd_);
        std::vector<double> p(n_ * nh_ * L);
        ref::attention(q.data(), order_.data(), k.data(), v.data(), n_, nh_, nkv_, hd_, mask_,
                       scale, want.data(), p.data());
        bound.resize(want.size());
        const size_t group = nh_ / nkv_;
        // Relative score error per unit of scale·Σ|q·k| and the P·V term per unit of Σ p·|v|.
        constexpr double e = 0x1p-8;
        const double sums = (L + hd_ + 16) * u;
        double score_rel = (hd_ + 3) * u, pv_rel = sums;
        if (check_ == Check::Bf16Exact) {
            score_rel = 2 * e + e * e + (hd_ + 3) * u * (1 + e) * (1 + e);
            pv_rel = 2 * e + e * e + sums * (1 + e) * (1 + e);
        } else if (rounded) {
            score_rel = (hd_ + 4) * u;  // + the f32 multiply by the scale
            pv_rel = e + sums * (1 + e);
        }
        for (size_t r = 0; r < n_; ++r)
            for (size_t h = 0; h < nh_; ++h) {
                const size_t g = h / group;
                double ds = 0;  // the largest score error of the row
                for (size_t a = 0; a < L; ++a) {
                    double mag = 0;
                    for (size_t d = 0; d < hd_; ++d)
                        mag += std::fabs(q[(r * nh_ + h) * hd_ + d] * k[(g * L + a) * hd_ + d]);
                    ds = std::max(ds, score_rel * mag * scale);
                }
                const double dp = 2 * ds + 8 * u;  // + exp's error (≤ 4u) and p's rounding
                for (size_t d = 0; d < hd_; ++d) {
                    double pv = 0;
                    for (size_t a = 0; a < L; ++a)
                        pv += p[(r * nh_ + h) * L + a] * std::fabs(v[(g * L + a) * hd_ + d]);
                    bound[(r * nh_ + h) * hd_ + d] = (2 * dp + pv_rel) * pv + 1e-30;
                }
            }
    }

  private:
    // [nkv, L, hd] over a cache of cap_ rows of row_ floats.
    TensorRef kv_view(float* p, int64_t L) const {
        TensorRef t = TensorRef::contiguous(p, {I(nkv_), L, I(hd_)});
        t.stride[0] = I(cap_ * row_);
        t.stride[1] = I(row_);
        return t;
    }
    MaskSpec m_;
    size_t n_, nh_, nkv_, hd_, row_, cap_ = 0;
    float scale_;
    Check check_;
    bool shuffle_;
    std::vector<float> q_, kc_, vc_;
    std::vector<int32_t> order_, split_of_, split_end_;
    std::vector<uint8_t> hidden_;
    std::vector<AttnSplit> modes_;
    AttnMask mask_;
};

// ---- conv3d ----------------------------------------------------------------------------------

class Conv3dCase : public OpCase {
  public:
    Conv3dCase(size_t T, size_t H, size_t W, size_t ci, size_t co, int kt, int kh, int kw,
               Conv3dParams p, size_t tc, WeightType type, bool bias, bool accumulate,
               size_t gs = 0, Bf16Act bf16_act = Bf16Act::F32)
        : T_(T),
          H_(H),
          W_(W),
          ci_(ci),
          co_(co),
          kt_(kt),
          kh_(kh),
          kw_(kw),
          tc_(tc),
          p_(p),
          type_(type),
          bias_on_(bias),
          acc_(accumulate),
          bf16_act_(bf16_act) {
        x_ = rand_vec(T * H * W * ci, 91 + T * ci);
        cache_ = rand_vec(std::max<size_t>(tc, 1) * H * W * ci, 92 + ci);
        bias_ = rand_vec(co, 93 + co);
        const size_t K = static_cast<size_t>(kt * kh * kw) * ci;
        // The checkpoint layout [co, ci, kt, kh, kw] for F32/BF16 (through from_checkpoint);
        // INT4 is built tap-major (from_tap_major).
        if (type == WeightType::Q4) {
            wd_ = make_weight(type, co, K, gs, 94 + K);
            w_ = Conv3dWeight::from_tap_major(wd_.view(), I(co), I(ci), kt, kh, kw,
                                              bias ? bias_.data() : nullptr);
            wref_.resize(co * K);
            const WeightView v = wd_.view();
            for (size_t o = 0; o < co; ++o)
                for (size_t c = 0; c < ci; ++c)
                    for (int tap = 0; tap < kt * kh * kw; ++tap)
                        wref_[(o * ci + c) * (kt * kh * kw) + tap] = weight_ref(v, o, tap * ci + c);
        } else {
            const auto wf = rand_vec(co * K, 95 + K, 0.5f);
            TensorView tv;
            tv.shape = {I(co), I(ci), kt, kh, kw};
            std::vector<uint16_t> wb;
            if (type == WeightType::F32) {
                tv.dtype = DType::F32;
                tv.data = reinterpret_cast<const uint8_t*>(wf.data());
                tv.nbytes = wf.size() * 4;
                wref_ = f64(wf);
            } else {
                for (float f : wf) wb.push_back(f32_to_bf16(f));
                tv.dtype = DType::BF16;
                tv.data = reinterpret_cast<const uint8_t*>(wb.data());
                tv.nbytes = wb.size() * 2;
                for (uint16_t b : wb) wref_.push_back(bf16_to_f32(b));
            }
            TensorView bv;
            bv.dtype = DType::F32;
            bv.shape = {I(co)};
            bv.data = reinterpret_cast<const uint8_t*>(bias_.data());
            bv.nbytes = co * 4;
            w_ = Conv3dWeight::from_checkpoint(tv, bias ? &bv : nullptr);
        }
        To_ = (T + p.pad_t_front - kt) / p.stride_t + 1;
        Ho_ = (H + p.pad_top + p.pad_bottom - kh) / p.stride_h + 1;
        Wo_ = (W + p.pad_left + p.pad_right - kw) / p.stride_w + 1;
        y0_ = rand_vec(To_ * Ho_ * Wo_ * co, 96 + co);
    }
    std::string name() const override {
        std::ostringstream s;
        s << "conv3d_" << weight_type_name(type_) << "_x" << T_ << "x" << H_ << "x" << W_ << "x"
          << ci_ << "_co" << co_ << "_k" << kt_ << kh_ << kw_ << "_s" << p_.stride_t << p_.stride_h
          << p_.stride_w << "_pt" << p_.pad_t_front << "_p" << p_.pad_top << p_.pad_bottom
          << p_.pad_left << p_.pad_right << "_cache" << tc_ << (bias_on_ ? "_bias" : "")
          << (acc_ ? "_acc" : "") << (bf16_act_ == Bf16Act::Bf16 ? "_bf16act" : "");
        return s.str();
    }
    Bf16Act bf16_act() const override { return bf16_act_; }
    std::vector<float> run(const OpContext& ctx) override {
        std::vector<float> y = acc_ ? y0_ : std::vector<float>(y0_.size(), 0.0f);
        const TensorRef cache =
            TensorRef::contiguous(cache_.data(), {I(tc_), I(H_), I(W_), I(ci_)});
        conv3d(ctx, TensorRef::contiguous(x_.data(), {I(T_), I(H_), I(W_), I(ci_)}),
               tc_ ? &cache : nullptr, w_, p_,
               TensorRef::contiguous(y.data(), {I(To_), I(Ho_), I(Wo_), I(co_)}), acc_);
        return y;
    }
    void reference(std::vector<double>& want, std::vector<double>& bound) override {
        const auto x = f64(x_), cache = f64(cache_), b = f64(bias_);
        want.resize(y0_.size());
        ref::conv3d(x.data(), I(T_), I(H_), I(W_), I(ci_), tc_ ? cache.data() : nullptr, I(tc_),
                    wref_.data(), I(co_), kt_, kh_, kw_, bias_on_ ? b.data() : nullptr, p_,
                    want.data());
        // The same sum with |x|·|w| gives Σ|a·b| (and |bias|).
        std::vector<double> ax(x.size()), ac(cache.size()), aw(wref_.size()), ab(b.size()),
            mag(want.size());
        for (size_t i = 0; i < x.size(); ++i) ax[i] = std::fabs(x[i]);
        for (size_t i = 0; i < cache.size(); ++i) ac[i] = std::fabs(cache[i]);
        for (size_t i = 0; i < aw.size(); ++i) aw[i] = std::fabs(wref_[i]);
        for (size_t i = 0; i < b.size(); ++i) ab[i] = std::fabs(b[i]);
        ref::conv3d(ax.data(), I(T_), I(H_), I(W_), I(ci_), tc_ ? ac.data() : nullptr, I(tc_),
                    aw.data(), I(co_), kt_, kh_, kw_, bias_on_ ? ab.data() : nullptr, p_,
                    mag.data());
        const size_t K = static_cast<size_t>(kt_ * kh_ * kw_) * ci_;
        bound.resize(want.size());
        // bf16 activations: 2^-8 of Σ|w·x| (mag less |bias|), the sums' u on a 2^-8 larger
        // magnitude, and the flush term with Σ|w| <= K·max|w| per output.
        double wmax = 0;
        for (double a : aw) wmax = std::max(wmax, a);
        for (size_t i = 0; i < want.size(); ++i) {
            if (acc_) want[i] += y0_[i];
            bound[i] = (K + kt_ + 3) * u * (mag[i] + (acc_ ? std::fabs(y0_[i]) : 0.0)) +
                       u * std::fabs(want[i]) + 1e-30;
            if (bf16_act_ == Bf16Act::Bf16) {
                const double wx = mag[i] - (bias_on_ ? ab[i % co_] : 0.0);
                bound[i] += 0x1p-8 * wx * (1 + (K + kt_ + 3) * u) + 0x1p-126 * K * wmax;
            }
        }
    }

  private:
    size_t T_, H_, W_, ci_, co_;
    int kt_, kh_, kw_;
    size_t tc_;
    Conv3dParams p_;
    WeightType type_;
    bool bias_on_, acc_;
    Bf16Act bf16_act_;
    size_t To_ = 0, Ho_ = 0, Wo_ = 0;
    std::vector<float> x_, cache_, bias_, y0_;
    std::vector<double> wref_;
    WeightData wd_;
    Conv3dWeight w_;
};

// ---- the table -------------------------------------------------------------------------------

Conv3dParams conv_params(int st, int sh, int sw, int pt, int top, int bottom, int left, int right) {
    Conv3dParams p;
    p.stride_t = st;
    p.stride_h = sh;
    p.stride_w = sw;
    p.pad_t_front = pt;
    p.pad_top = top;
    p.pad_bottom = bottom;
    p.pad_left = left;
    p.pad_right = right;
    return p;
}

const std::vector<CasePtr>& all_cases() {
    static const std::vector<CasePtr> cases = [] {
        std::vector<CasePtr> c;
        auto add_case = [&](OpCase* p) { c.emplace_back(p); };
        using WT = WeightType;
        using AM = ActMode;
        // linear: GEMV (n <= 8) and GEMM (n > 8) paths, odd sizes, every weight type.
        for (auto [n, in, out] :
             std::vector<std::array<size_t, 3>>{{1, 7, 1}, {3, 65, 17}, {17, 64, 9}, {65, 33, 24}})
            add_case(new LinearCase(n, in, out, WT::F32, 0, AM::F32, false, n % 2 == 1));
        for (auto [n, in, out] : std::vector<std::array<size_t, 3>>{
                 {1, 64, 17}, {7, 65, 3}, {17, 96, 33}, {65, 40, 16}})
            add_case(new LinearCase(n, in, out, WT::BF16, 0, AM::F32, false, n % 2 == 1));
        for (auto [n, in, out, gs] : std::vector<std::array<size_t, 4>>{{1, 64, 17, 32},
                                                                        {3, 128, 8, 64},
                                                                        {17, 64, 33, 32},
                                                                        {65, 96, 7, 32},
                                                                        {70, 256, 40, 64}}) {
            add_case(new LinearCase(n, in, out, WT::Q4, gs, AM::F32, false, true));
            add_case(new LinearCase(n, in, out, WT::Q4, gs, AM::Int8, false, n == 1));
        }
        // BF16 weights with bf16 activations (vdpbf16ps on AVX-512): GEMV (n <= 8) with in
        // not a multiple of 4 (masked tail) and odd block counts, GEMM with odd in (a zero pair),
        // several row chunks and panels, strided rows.
        for (auto [n, in, out] : std::vector<std::array<size_t, 3>>{{1, 64, 17},
                                                                    {2, 7, 8},
                                                                    {4, 130, 24},
                                                                    {8, 65, 3},
                                                                    {9, 96, 33},
                                                                    {17, 301, 40},
                                                                    {300, 33, 70}})
            add_case(
                new LinearCase(n, in, out, WT::BF16, 0, AM::F32, false, n % 2 == 1, Bf16Act::Bf16));
        add_case(new LinearCase(13, 65, 17, WT::BF16, 0, AM::F32, true, true, Bf16Act::Bf16));
        // The AMX tiles (n >= 32 on the amx ISA): exact tiles, tail rows and outputs (n, out not
        // multiples of 32 or 16), K tails (in not a multiple of 32 or of 4), more than one K
        // chunk (in > 4096), two passes of rows (256 rows each at in 8192), strided rows.
        for (auto [n, in, out] : std::vector<std::array<size_t, 3>>{{32, 64, 32},
                                                                    {33, 97, 17},
                                                                    {64, 32, 48},
                                                                    {95, 130, 70},
                                                                    {40, 4133, 9},
                                                                    {301, 8192, 9}})
            add_case(
                new LinearCase(n, in, out, WT::BF16, 0, AM::F32, false, n % 2 == 1, Bf16Act::Bf16));
        add_case(new LinearCase(45, 66, 33, WT::BF16, 0, AM::F32, true, true, Bf16Act::Bf16));
        // INT4 with bf16 activations (ActMode::Bf16): the GEMV (n <= 8, x̃ and exact w), the
        // dequantize-to-bf16 blocks (scalar, AVX2, AVX-512, AMX below 32 rows), the AMX tiles
        // (n >= 32): tail rows and outputs, several K chunks (in > 1024), group sizes 32-128,
        // two passes of rows (256 rows each at in 8192); and several output blocks of the
        // dequantized path (out > its 4 MiB of w̃ at in 4160).
        for (auto [n, in, out, gs] : std::vector<std::array<size_t, 4>>{{1, 64, 17, 32},
                                                                        {3, 128, 8, 64},
                                                                        {17, 64, 33, 32},
                                                                        {32, 64, 32, 64},
                                                                        {65, 96, 7, 32},
                                                                        {70, 256, 40, 64},
                                                                        {33, 128, 70, 128},
                                                                        {40, 2112, 9, 64},
                                                                        {12, 4160, 530, 64},
                                                                        {301, 8192, 9, 64}})
            add_case(new LinearCase(n, in, out, WT::Q4, gs, AM::Bf16, false, n % 2 == 1));
        add_case(new LinearCase(35, 64, 9, WT::Q4, 32, AM::Bf16, true, true));
        // INT5 and NVFP4 (spec §1.2, §1.3): f32 activations only.
        for (auto [n, in, out, gs] : std::vector<std::array<size_t, 4>>{
                 {1, 64, 17, 32}, {3, 128, 8, 64}, {17, 64, 33, 32}, {65, 96, 7, 32}})
            add_case(new LinearCase(n, in, out, WT::Int5, gs, AM::F32, false, n % 2 == 1));
        for (auto [n, in, out] : std::vector<std::array<size_t, 3>>{
                 {1, 64, 17}, {3, 128, 8}, {17, 48, 33}, {65, 96, 7}})
            add_case(new LinearCase(n, in, out, WT::Nvfp4, 16, AM::F32, false, n % 2 == 0));
        add_case(new LinearCase(3, 65, 17, WT::F32, 0, AM::F32, true, true));
        add_case(new LinearCase(17, 64, 9, WT::Q4, 32, AM::F32, true, false));
        add_case(new LinearCase(5, 64, 9, WT::Int5, 16, AM::F32, true, true));
        add_case(new LinearCase(2, 96, 9, WT::Nvfp4, 16, AM::F32, true, true));
        // row ops
        for (size_t dim : {1, 7, 64, 65})
            for (size_t rows : {1, 3, 17})
                add_case(new RmsNormCase(rows, dim, dim != 7, 1e-6f, 0, false));
        add_case(new RmsNormCase(5, 65, true, 1e-2f, 3, false));
        add_case(new RmsNormCase(4, 17, true, 1e-6f, 0, true));
        add_case(new RmsNormCase(1200, 24, true, 1e-6f, 0, false));  // threaded rows
        for (size_t cch : {1, 3, 17, 65}) add_case(new ChannelRmsNormCase(7, cch, cch != 3, false));
        add_case(new ChannelRmsNormCase(9, 17, true, true));
        add_case(new ChannelRmsNormCase(1000, 32, true, false));
        for (Unary op : {Unary::Silu, Unary::Gelu}) {
            for (auto [r, cc] :
                 std::vector<std::array<size_t, 2>>{{1, 1}, {3, 7}, {1, 65}, {17, 65}})
                add_case(new UnaryCase(op, r, cc, false));
            add_case(new UnaryCase(op, 3, 7000, true));  // threaded flat pieces
        }
        for (auto [r, cc] : std::vector<std::array<size_t, 2>>{{1, 1}, {3, 7}, {17, 65}, {3, 7000}})
            add_case(new SiluMulCase(r, cc));
        add_case(new AddCase(3, 7, 3, 7));
        add_case(new AddCase(17, 65, 17, 65));
        add_case(new AddCase(17, 65, 1, 65));
        add_case(new AddCase(17, 65, 17, 1));
        add_case(new AddCase(3, 7000, 3, 7000));
        add_case(new AddCase(5, 17, 0, 17));  // b [17]: fewer dimensions
        add_case(new UpsampleCase(1, 1, 1, 1));
        add_case(new UpsampleCase(2, 3, 5, 7));
        // rope, every table form
        for (RopeForm f : {RopeForm::OneD, RopeForm::Mrope, RopeForm::TwoD})
            for (auto [n, h, hd] : std::vector<std::array<size_t, 3>>{
                     {1, 1, 4}, {7, 3, 16}, {17, 2, 36}, {3, 2, 128}})
                add_case(new RopeCase(f, n, h, hd, 0));
        add_case(new RopeCase(RopeForm::OneD, 7, 3, 18, 4));
        add_case(new RopeCase(RopeForm::TwoD, 5, 2, 20, 2));
        // attention, every mask kind
        using K = AttnMask::Kind;
        using S = AttnSplit;
        const MaskSpec none{K::None, 0, {}, {}, {}, "none"};
        const MaskSpec causal{K::Causal, 0, {}, {}, {}, "causal"};
        const MaskSpec causal_cache5{K::Causal, 5, {}, {}, {}, "causal"};
        const MaskSpec causal_cache70{K::Causal, 70, {}, {}, {}, "causal"};
        const MaskSpec none_cache{K::None, 4, {}, {}, {}, "none"};
        const MaskSpec windows{K::Segments, 0, {0, 3, 3, 10, 17}, {}, {}, "segments"};
        const MaskSpec windows65{K::Segments, 0, {0, 16, 32, 48, 64, 65}, {}, {}, "segments"};
        const MaskSpec splits{K::Splits, 0, {}, {}, {{3, S::Causal}, {5, S::Noise}, {2, S::Causal}},
                              "splits"};
        const MaskSpec splits2{K::Splits, 0, {}, {}, {{2, S::Causal}, {4, S::Full}, {3, S::Noise}},
                               "splits"};
        const MaskSpec splits_cache{
            K::Splits,       7,       {}, {{3, S::Causal}, {3, S::Noise}, {1, S::Causal}},
            {{5, S::Noise}}, "splits"};
        const MaskSpec splits_cache_long{K::Splits,
                                         9,
                                         {},
                                         {{4, S::Causal}, {5, S::Noise}},
                                         {{30, S::Causal}, {33, S::Full}, {2, S::Causal}},
                                         "splits"};
        add_case(new AttentionCase(none, 7, 4, 2, 16, false));
        add_case(new AttentionCase(none_cache, 3, 3, 3, 7, false, 0.3f));
        add_case(new AttentionCase(causal, 1, 2, 1, 12, false));
        add_case(new AttentionCase(causal, 17, 4, 2, 16, false));
        add_case(new AttentionCase(causal, 65, 8, 1, 65, false));
        add_case(new AttentionCase(causal_cache5, 3, 4, 2, 32, false));
        add_case(new AttentionCase(causal_cache70, 7, 2, 2, 128, false));
        add_case(new AttentionCase(windows, 17, 4, 2, 16, false));
        add_case(new AttentionCase(windows65, 65, 2, 1, 40, false));
        // The ViT's head_dim 80 (the register-blocked path for head dims not a multiple of 64):
        // row and key counts off the 3-row / 8-key blocks, and windows.
        add_case(new AttentionCase(none, 70, 2, 2, 80, false));
        add_case(new AttentionCase(windows65, 65, 2, 1, 80, false));
        add_case(new AttentionCase(causal, 37, 2, 1, 24, false));
        add_case(new AttentionCase(splits, 10, 4, 2, 16, true));
        add_case(new AttentionCase(splits2, 9, 8, 1, 12, true));
        add_case(new AttentionCase(splits_cache, 5, 4, 2, 40, true));
        add_case(new AttentionCase(splits_cache_long, 65, 4, 2, 16, true));
        // Many-query blocks (the column-form tiles: blocks of 32 query rows, 8 or more take them)
        // with partial query blocks (rows off the vector width) and partial key tiles (64) for
        // every mask kind and the head dims Lance runs (ViT 80, decoder 128) and the odd ones.
        const MaskSpec windows_edge{K::Segments, 0,  {0, 64, 128, 150, 200},
                                    {},          {}, "segments"};  // a partial edge window
        const MaskSpec splits_many{
            K::Splits,
            9,
            {},
            {{4, S::Causal}, {5, S::Noise}},
            {{40, S::Causal}, {50, S::Full}, {20, S::Noise}, {30, S::Causal}},
            "splits"};
        add_case(new AttentionCase(none, 100, 2, 1, 24, false));
        add_case(new AttentionCase(none, 45, 2, 2, 80, false));
        add_case(new AttentionCase(none_cache, 41, 2, 1, 64, false));
        add_case(new AttentionCase(causal, 77, 4, 2, 128, false));
        add_case(new AttentionCase(causal_cache70, 40, 4, 2, 128, false));
        add_case(new AttentionCase(windows_edge, 200, 2, 2, 80, false));
        add_case(new AttentionCase(windows_edge, 200, 2, 1, 16, false));
        add_case(new AttentionCase(splits_many, 140, 4, 2, 64, true));
        add_case(new AttentionCase(splits_many, 140, 2, 1, 80, false));
        add_case(new AttentionCase(windows_edge, 200, 2, 2, 80, false, 0.0f, 160));  // ViT views
        add_case(new AttentionCase(causal_cache5, 40, 4, 2, 24, true, 0.0f, 3));
        add_case(new AttentionCase(splits_many, 140, 4, 2, 16, false, 0.0f, 48));
        // Bf16 attention (AMX tiles for 16 or more query rows): every case above in both checks,
        // and the generation shape in small: 8 query heads per kv head, a cached prefix, the
        // noisy block's full split after it, head dims 64 / 80 / 128, rows and keys off 16/32/64.
        {
            const MaskSpec none_cache37{K::None, 37, {}, {}, {}, "none"};
            const MaskSpec gen_splits{
                K::Splits, 29, {}, {{20, S::Causal}, {9, S::Full}}, {{70, S::Noise}}, "splits"};
            add_case(new AttentionCase(none_cache37, 70, 16, 2, 128, false));
            add_case(new AttentionCase(gen_splits, 70, 16, 2, 128, true));
            add_case(new AttentionCase(none_cache37, 33, 8, 1, 64, false));
            add_case(new AttentionCase(causal, 97, 4, 2, 80, false));
            add_case(new AttentionCase(windows_edge, 200, 4, 2, 64, false, 0.0f, 32));
            add_case(new AttentionCase(causal_cache70, 16, 4, 2, 128, false));
            add_case(new AttentionCase(causal_cache70, 15, 4, 2, 128, false));
            // Long key ranges (the AMX path's 128-key tiles), one ending mid-tile per row.
            const MaskSpec none_cache530{K::None, 530, {}, {}, {}, "none"};
            const MaskSpec causal_cache520{K::Causal, 520, {}, {}, {}, "causal"};
            add_case(new AttentionCase(none_cache530, 40, 4, 1, 64, false));
            add_case(new AttentionCase(causal_cache520, 37, 4, 2, 80, true));
            for (size_t i = 0, end = c.size(); i < end; ++i)
                if (auto* a = dynamic_cast<AttentionCase*>(c[i].get()))
                    for (auto check :
                         {AttentionCase::Check::Bf16Exact, AttentionCase::Check::Bf16Rounded})
                        add_case(a->with_check(check));
        }
        // conv3d: causal time padding with and without cache, stride 2 (VAE downsample pads),
        // 1x1, odd channels, every weight type, accumulate.
        const Conv3dParams same3 = conv_params(1, 1, 1, 2, 1, 1, 1, 1);
        const Conv3dParams down = conv_params(1, 2, 2, 0, 0, 1, 0, 1);
        const Conv3dParams time_down = conv_params(2, 1, 1, 0, 0, 0, 0, 0);
        const Conv3dParams one = conv_params(1, 1, 1, 0, 0, 0, 0, 0);
        for (WT t : {WT::F32, WT::BF16}) {
            add_case(new Conv3dCase(3, 5, 7, 3, 17, 3, 3, 3, same3, 0, t, true, false));
            add_case(new Conv3dCase(2, 4, 3, 5, 8, 3, 3, 3, same3, 2, t, true, false));
            add_case(new Conv3dCase(2, 4, 3, 5, 8, 3, 3, 3, same3, 1, t, false, true));
            add_case(new Conv3dCase(1, 7, 5, 3, 9, 1, 3, 3, down, 0, t, true, false));
            add_case(new Conv3dCase(5, 3, 3, 4, 6, 3, 1, 1, time_down, 0, t, true, false));
            add_case(new Conv3dCase(2, 3, 17, 65, 7, 1, 1, 1, one, 0, t, true, true));
            // More than 256 outputs: one pixel block at a time, its panels split between threads
            // (narrower outputs take whole pixel blocks per thread, as in every case above).
            add_case(new Conv3dCase(2, 3, 4, 6, 264, 3, 3, 3, same3, 1, t, true, true));
        }
        // BF16 weights with bf16 activations: cache, stride 2, accumulate, 1x1 with odd C_in.
        add_case(new Conv3dCase(3, 5, 7, 3, 17, 3, 3, 3, same3, 0, WT::BF16, true, false, 0,
                                Bf16Act::Bf16));
        add_case(new Conv3dCase(2, 4, 3, 5, 40, 3, 3, 3, same3, 2, WT::BF16, true, true, 0,
                                Bf16Act::Bf16));
        add_case(new Conv3dCase(1, 7, 5, 3, 9, 1, 3, 3, down, 0, WT::BF16, true, false, 0,
                                Bf16Act::Bf16));
        add_case(new Conv3dCase(2, 3, 17, 65, 7, 1, 1, 1, one, 0, WT::BF16, false, true, 0,
                                Bf16Act::Bf16));
        add_case(new Conv3dCase(3, 4, 5, 16, 9, 3, 3, 3, same3, 1, WT::Q4, true, false, 16));
        add_case(new Conv3dCase(2, 5, 3, 32, 17, 1, 1, 1, one, 0, WT::Q4, false, false, 32));
        add_case(new Conv3dCase(1, 6, 6, 32, 8, 1, 3, 3, down, 0, WT::Q4, true, true, 32));
        // Many output pixels: several panels of one frame, threaded gathers.
        add_case(new Conv3dCase(1, 40, 40, 8, 16, 1, 3, 3, same3, 0, WT::F32, true, false));
        add_case(new Conv3dCase(1, 40, 40, 8, 40, 1, 3, 3, same3, 0, WT::BF16, true, false, 0,
                                Bf16Act::Bf16));
        return c;
    }();
    return cases;
}

// ---- the harness -----------------------------------------------------------------------------

class Ops : public ::testing::TestWithParam<std::tuple<size_t, Isa>> {};

TEST_P(Ops, MatchesReferenceAndIsThreadInvariant) {
    const auto [index, isa] = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << isa_name(isa) << " is not supported by this CPU";
    OpCase& c = *all_cases()[index];
    std::vector<double> want, bound;
    c.reference(want, bound);
    std::vector<float> first;
    for (size_t threads : {1, 2, 3}) {
        const OpContext ctx{&pool_of(threads), isa, c.act(), c.bf16_act(), c.attn()};
        const std::vector<float> got = c.run(ctx);
        ASSERT_EQ(got.size(), want.size());
        if (threads == 1) {
            size_t worst = 0;
            double worst_ratio = -1;
            for (size_t i = 0; i < got.size(); ++i) {
                const double err = std::fabs(double(got[i]) - want[i]);
                const double ratio = std::isfinite(got[i]) ? err / bound[i] : INFINITY;
                if (ratio > worst_ratio) {
                    worst_ratio = ratio;
                    worst = i;
                }
            }
            EXPECT_LE(worst_ratio, 1.0)
                << c.name() << " on " << isa_name(isa) << ": worst element " << worst << " got "
                << got[worst] << " want " << want[worst] << " |err| "
                << std::fabs(double(got[worst]) - want[worst]) << " bound " << bound[worst];
            if (c.report_worst())
                std::printf(
                    "[  worst   ] %s on %s: element %zu |err| %.3g, bound %.3g (%.3f of it)\n",
                    c.name().c_str(), isa_name(isa), worst,
                    std::fabs(double(got[worst]) - want[worst]), bound[worst], worst_ratio);
            first = got;
        } else {
            EXPECT_EQ(std::memcmp(got.data(), first.data(), got.size() * sizeof(float)), 0)
                << c.name() << " on " << isa_name(isa) << ": " << threads
                << " threads differ from 1";
        }
    }
}

std::vector<size_t> case_indices() {
    std::vector<size_t> v(all_cases().size());
    std::iota(v.begin(), v.end(), size_t{0});
    return v;
}

INSTANTIATE_TEST_SUITE_P(AllCases, Ops,
                         ::testing::Combine(::testing::ValuesIn(case_indices()),
                                            ::testing::ValuesIn(kIsas)),
                         [](const ::testing::TestParamInfo<Ops::ParamType>& info) {
                             std::string s = all_cases()[std::get<0>(info.param)]->name() + "_" +
                                             isa_name(std::get<1>(info.param));
                             for (char& ch : s)
                                 if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return s;
                         });

// Bad input is one error, not a crash.
TEST(OpsErrors, ShapeMismatchesAreErrors) {
    const OpContext ctx = OpContext::defaults();
    std::vector<float> a(12), b(12);
    EXPECT_THROW(silu(ctx, TensorRef::matrix(a.data(), 3, 4), TensorRef::matrix(b.data(), 4, 3)),
                 Error);
    const LinearWeight w = LinearWeight::from_f32(a.data(), 3, 4);
    EXPECT_THROW(linear(ctx, TensorRef::matrix(a.data(), 1, 5), w, nullptr,
                        TensorRef::matrix(b.data(), 1, 3)),
                 Error);
    if (!cpu_supports(Isa::Avx512)) {
        OpContext bad = ctx;
        bad.isa = Isa::Avx512;
        EXPECT_THROW(
            silu(bad, TensorRef::matrix(a.data(), 3, 4), TensorRef::matrix(b.data(), 3, 4)), Error);
    }
}

}  // namespace
}  // namespace lancet::kernels
