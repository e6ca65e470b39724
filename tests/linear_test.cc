// Checks every compiled linear kernel path against the double-precision reference, plus repacking,
// thread-count determinism and shape validation.
#include "kernels/linear.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/dispatch.h"
#include "kernels/linear_kernels.h"
#include "kernels/ops.h"
#include "quant/q4.h"

namespace lancet::kernels {
namespace {

// A random weight in its file layout, with a view on it.
struct FileWeight {
    std::vector<float> f32;
    std::vector<uint16_t> bf16;
    std::vector<uint8_t> qweight, zeros;
    std::vector<uint16_t> scales;
    WeightView view;
};

// Non-zero values: a random sign times a magnitude in [lo, hi].
float nonzero(std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> mag(lo, hi);
    return (rng() & 1 ? 1.0f : -1.0f) * mag(rng);
}

FileWeight make_weight(WeightType type, size_t out, size_t in, size_t gs, uint32_t seed) {
    std::mt19937 rng(seed);
    FileWeight w;
    switch (type) {
        case WeightType::F32:
            w.f32.resize(out * in);
            for (auto& v : w.f32) v = nonzero(rng, 0.01f, 0.5f);
            w.view = WeightView::from_f32(w.f32.data(), out, in);
            break;
        case WeightType::BF16:
            w.bf16.resize(out * in);
            for (auto& v : w.bf16) v = f32_to_bf16(nonzero(rng, 0.01f, 0.5f));
            w.view = WeightView::from_bf16(w.bf16.data(), out, in);
            break;
        case WeightType::Q4: {
            const size_t groups = in / gs;
            w.qweight.resize(out * in / 2);
            for (auto& v : w.qweight) v = static_cast<uint8_t>(rng());
            w.scales.resize(out * groups);
            for (auto& v : w.scales)
                v = f32_to_bf16(std::uniform_real_distribution<float>(0.002f, 0.05f)(rng));
            w.zeros.resize(out * groups);
            for (auto& v : w.zeros) v = static_cast<uint8_t>(rng() % 16);
            w.view = WeightView::from_awq_int4(w.qweight.data(), w.scales.data(), w.zeros.data(),
                                               out, in, gs);
            break;
        }
        case WeightType::Int5: {
            const size_t groups = in / gs;
            w.qweight.resize(out * in);
            for (auto& v : w.qweight) v = static_cast<uint8_t>(rng() % 32);
            w.scales.resize(out * groups);
            for (auto& v : w.scales)
                v = f32_to_bf16(std::uniform_real_distribution<float>(0.001f, 0.025f)(rng));
            w.zeros.resize(out * groups);
            for (auto& v : w.zeros) v = static_cast<uint8_t>(rng() % 32);
            w.view = WeightView::from_awq_int5(w.qweight.data(), w.scales.data(), w.zeros.data(),
                                               out, in, gs);
            break;
        }
        case WeightType::Nvfp4: {
            // Every code 0..15 (random bytes), one bf16 scale per 16 columns; gs is not used.
            w.qweight.resize(out * in / 2);
            for (auto& v : w.qweight) v = static_cast<uint8_t>(rng());
            w.scales.resize(out * (in / kNvfp4Block));
            for (auto& v : w.scales)
                v = f32_to_bf16(std::uniform_real_distribution<float>(0.005f, 0.08f)(rng));
            w.view = WeightView::from_nvfp4(w.qweight.data(), w.scales.data(), out, in);
            break;
        }
    }
    return w;
}

bool factored(WeightType t) {
    return t == WeightType::Q4 || t == WeightType::Int5 || t == WeightType::Nvfp4;
}

// The code of w[o, i] of a Q4, Int5 or Nvfp4 view, straight from the file layout.
unsigned file_code(const WeightView& w, size_t o, size_t i) {
    if (w.type == WeightType::Int5) return w.qweight[o * w.in + i];
    return (w.qweight[o * (w.in / 2) + i / 2] >> (4 * (i & 1))) & 0xf;
}

// The factored form's terms for w[o, i] = (q - z) * s: |q s| + |z s|. For Nvfp4 the AVX2 GEMV
// factors value = u / 2 - 6 with u / 2 = value + 6 in [0, 12].
double factored_magnitude(const WeightView& w, size_t o, size_t i) {
    const size_t groups = w.in / w.group_size, g = i / w.group_size;
    const double s = bf16_to_f32(w.scales[o * groups + g]);
    if (w.type == WeightType::Nvfp4) {
        const unsigned c = file_code(w, o, i);
        const double v = (c & 8 ? -1.0 : 1.0) * kE2m1Magnitude[c & 7];
        return std::fabs((v + 6) * s) + std::fabs(6 * s);
    }
    return std::fabs(file_code(w, o, i) * s) + std::fabs(w.zeros[o * groups + g] * s);
}

std::vector<float> random_vector(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<float> v(n);
    for (auto& f : v) f = nonzero(rng, 0.05f, 1.0f);
    return v;
}

// Error bound for one output y[r, o] = b + sum_k x_k w_k computed in f32 by any of the kernels.
// Higham (Accuracy and Stability, Thm 3.1 / eq. 3.5): a sum of m terms, each possibly a rounded
// product (FMA or not), in any order, is within gamma(m) = m*u/(1-m*u) (u = 2^-24) of the exact
// sum, relative to the sum of the terms' magnitudes. The Q4 GEMV kernels compute the factored
// form b + sum_g (s_g * sum_{k in g} q_k x_k - (z_g s_g) * sum_{k in g} x_k): each term then goes
// through at most gs + 2G + 1 roundings (G = in/gs groups), and the magnitudes are
// |x_k| (|q_k s_g| + |z_g s_g|), not |x_k w_k|; the Int5 GEMV kernels use the same form, and the
// AVX2 Nvfp4 GEMV too, per 16-column block, with q = value + 6 and z = 6 (the AVX-512 one sums
// value * x per block and scales once, the other paths decode each weight exactly and sum like a
// dense weight: both within the same bound, their terms being |w x| <= |x| (|q s| + |z s|)). So the
// bound used for every path and type is
//   |y - ref| <= gamma(K + 2G + 2) * (|b| + sum_k |x_k| * mag_k)   (constant c = 1),
// with mag_k = |w_k| for F32/BF16 (G = 1) and |q_k s| + |z s| for Q4/Int5/Nvfp4; the double
// reference adds
// at most K * 2^-53 relative, covered by the +2. It is a worst case: observed errors are ~100x
// smaller, and the CatchesOneWrongCode test shows that a single wrong code is still caught.
struct CheckResult {
    bool ok = true;
    double worst_ratio = 0;  // max |err| / bound
    std::string worst;       // description of the worst element
};

CheckResult check_linear(const float* x, size_t n, const WeightView& w, const float* bias,
                         const float* y) {
    std::vector<double> ref(n * w.out);
    linear_ref(x, n, w, bias, ref.data());
    const size_t groups = factored(w.type) ? w.in / w.group_size : 1;
    const double u = std::ldexp(1.0, -24), m = double(w.in + 2 * groups + 2);
    const double gamma = m * u / (1 - m * u);
    CheckResult res;
    std::vector<double> mag(w.in);
    for (size_t o = 0; o < w.out; ++o) {
        for (size_t i = 0; i < w.in; ++i) {
            if (factored(w.type)) {
                mag[i] = factored_magnitude(w, o, i);
            } else {
                mag[i] = std::fabs(weight_ref(w, o, i));
            }
        }
        for (size_t r = 0; r < n; ++r) {
            double sum = bias ? std::fabs(double(bias[o])) : 0.0;
            for (size_t i = 0; i < w.in; ++i) sum += std::fabs(double(x[r * w.in + i])) * mag[i];
            const double bound = gamma * sum;
            const double got = y[r * w.out + o], want = ref[r * w.out + o];
            const double err = std::fabs(got - want);
            const double ratio = std::isfinite(got) ? err / bound : INFINITY;
            if (!(ratio <= res.worst_ratio)) {
                res.worst_ratio = ratio;
                std::ostringstream os;
                os << "worst y[" << r << ", " << o << "]: got " << got << ", want " << want
                   << ", |err| " << err << ", bound " << bound;
                res.worst = os.str();
            }
        }
    }
    res.ok = res.worst_ratio <= 1.0;
    return res;
}

// Forces an ISA for the scope of a test, and restores the default after.
class ScopedIsa {
  public:
    explicit ScopedIsa(Isa isa) { force_isa(isa); }
    ~ScopedIsa() { clear_forced_isa(); }
};

const Isa kAllIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx};
const WeightType kAllTypes[] = {WeightType::F32, WeightType::BF16, WeightType::Q4, WeightType::Int5,
                                WeightType::Nvfp4};

class LinearPathTest : public ::testing::TestWithParam<std::tuple<Isa, WeightType>> {};

TEST_P(LinearPathTest, MatchesReference) {
    const auto [isa, type] = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    ScopedIsa scoped(isa);
    struct Shape {
        size_t out, in, gs;
    };
    // Outputs not a multiple of the 8-row block or the 16-row GEMM panel; K from one group up
    // to beyond one GEMM K chunk (256), including a K tail for the dense types.
    std::vector<Shape> shapes = {
        {257, 64, 32}, {24, 2048, 64}, {9, 1024, 128}, {40, 320, 32}, {16, 2304, 128}};
    // Odd sizes per type: a K tail for the dense types; for Int5 groups of 8 (two 4-column
    // chunks); for Nvfp4 three 16-column blocks (an odd number of blocks and of chunk pairs).
    if (type == WeightType::F32 || type == WeightType::BF16) shapes.push_back({19, 71, 0});
    if (type == WeightType::Int5) shapes.push_back({19, 40, 8});
    if (type == WeightType::Nvfp4) shapes.push_back({19, 48, 16});
    // 300 > kNc (256): a second row chunk and a partial last tile in the first.
    const size_t ns[] = {1, 2, 3, 5, 8, 9, 16, 100, 300};
    uint32_t seed = 1;
    double worst = 0;
    for (const Shape& s : shapes) {
        const FileWeight fw = make_weight(type, s.out, s.in, s.gs, seed++);
        const LinearWeight w(fw.view);
        const std::vector<float> bias = random_vector(s.out, seed++);
        for (size_t n : ns) {
            if (n >= 100 && s.in > 1024 && (isa == Isa::Scalar || n == 300)) continue;  // seconds
            const std::vector<float> x = random_vector(n * s.in, seed++);
            for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
                std::vector<float> y(n * s.out, NAN);
                linear(x.data(), n, w, b, y.data());
                const CheckResult res = check_linear(x.data(), n, fw.view, b, y.data());
                EXPECT_TRUE(res.ok)
                    << isa_name(isa) << " " << weight_type_name(type) << " out " << s.out << " in "
                    << s.in << " gs " << s.gs << " n " << n << (b ? " bias" : "") << ": "
                    << res.worst << " (ratio " << res.worst_ratio << ")";
                worst = std::max(worst, res.worst_ratio);
            }
        }
    }
    RecordProperty("worst_error_over_bound", std::to_string(worst));
    std::printf("[ info     ] worst |err| / bound = %.3g\n", worst);
}

TEST_P(LinearPathTest, BitIdenticalAcrossThreadCounts) {
    const auto [isa, type] = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    ScopedIsa scoped(isa);
    const FileWeight fw = make_weight(type, 257, 512, 64, 7);
    const LinearWeight w(fw.view);
    const std::vector<float> bias = random_vector(257, 8);
    ThreadPool p1(1), p2(2), p3(3);
    for (size_t n : {1, 5, 16, 37}) {
        const std::vector<float> x = random_vector(n * 512, 9 + n);
        std::vector<float> y1(n * 257), y2(n * 257), y3(n * 257);
        linear(x.data(), n, w, bias.data(), y1.data(), p1);
        linear(x.data(), n, w, bias.data(), y2.data(), p2);
        linear(x.data(), n, w, bias.data(), y3.data(), p3);
        EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * 4), 0) << "n " << n;
        EXPECT_EQ(std::memcmp(y1.data(), y3.data(), y1.size() * 4), 0) << "n " << n;
    }
}

// The checker itself must fail on a kernel that is wrong by one code step in one weight.
TEST_P(LinearPathTest, CatchesOneWrongCode) {
    const auto [isa, type] = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    ScopedIsa scoped(isa);
    FileWeight fw = make_weight(type, 40, 128, 32, 11);
    FileWeight bad = fw;
    switch (type) {
        case WeightType::F32:
            bad.f32[5 * 128 + 77] += 0.01f;
            break;
        case WeightType::BF16:
            bad.bf16[5 * 128 + 77] = f32_to_bf16(bf16_to_f32(bad.bf16[5 * 128 + 77]) + 0.01f);
            break;
        case WeightType::Q4:
            bad.qweight[5 * 64 + 38] ^= 0x10;
            break;  // column 77, high nibble
        case WeightType::Int5:
            bad.qweight[5 * 128 + 77] ^= 1;
            break;
        case WeightType::Nvfp4:
            bad.qweight[5 * 64 + 38] ^= 0x10;  // column 77: the next or previous table entry
            break;
    }
    bad.view.f32 = bad.f32.data();
    bad.view.bf16 = bad.bf16.data();
    bad.view.qweight = bad.qweight.data();
    const LinearWeight w(bad.view);
    for (size_t n : {1, 16}) {
        const std::vector<float> x = random_vector(n * 128, 12);
        std::vector<float> y(n * 40);
        linear(x.data(), n, w, nullptr, y.data());
        EXPECT_FALSE(check_linear(x.data(), n, fw.view, nullptr, y.data()).ok) << "n " << n;
        EXPECT_TRUE(check_linear(x.data(), n, bad.view, nullptr, y.data()).ok) << "n " << n;
    }
}

INSTANTIATE_TEST_SUITE_P(AllPaths, LinearPathTest,
                         ::testing::Combine(::testing::ValuesIn(kAllIsas),
                                            ::testing::ValuesIn(kAllTypes)),
                         [](const auto& info) {
                             return std::string(isa_name(std::get<0>(info.param))) + "_" +
                                    weight_type_name(std::get<1>(info.param));
                         });

// ---- W4A8 (int8 activations) ------------------------------------------------------------------

class ScopedAct {
  public:
    explicit ScopedAct(ActMode m) { set_activation_mode(m); }
    ~ScopedAct() { clear_activation_mode(); }
};

// Bound for one W4A8 output against the exact y = b + sum_k x_k w_k (the double reference).
// Activation quantization, per block of kb columns with amax = max|x|: the kernel uses
// d = fl(amax / 127), id = fl(127 / amax), x8 = rint(fl(x * id)), so
//   |d x8 - x| <= d |x8 - fl(x id)| + |x| |d id (1 + e) - 1| <= d/2 + gamma(3) |x|,
// and y_q = b + sum_k w_k d x8_k (what exact arithmetic on the int8 data would give) is within
//   E_q = sum_k |w_k| (d_k / 2 + gamma(3) |x_k|)
// of y. The kernel evaluates y_q exactly in integers per block and then in f32 as linear.h says:
// each term float(I) * fl(s d) or (z s) * XS_g passes through one product rounding, at most
// nblk + G accumulation roundings, the bpg roundings inside XS_g and the bias add, so with
// M = nblk + G + bpg + 4 (the +1 also covers the double reference), Higham's summation bound gives
//   E_f = gamma(M) * (|b| + sum_k (|q_k s| + |z s|) d_k |x8_k|),  d_k |x8_k| <= |x_k| (1 +
//   gamma(3)) + d_k / 2.
// So |y_w4a8 - y| <= E_q + E_f. E_q dominates (~ 1/254 of sum |w x| relative); errors of random
// sign make the observed error far smaller than this worst case.
CheckResult check_w4a8(const float* x, size_t n, const WeightView& w, const float* bias,
                       const float* y) {
    std::vector<double> ref(n * w.out);
    linear_ref(x, n, w, bias, ref.data());
    const size_t gs = w.group_size, groups = w.in / gs, kb = w4a8_block(gs), nblk = w.in / kb;
    const double u = std::ldexp(1.0, -24), g3 = 3 * u / (1 - 3 * u);
    const double m = double(nblk + groups + gs / kb + 4), gm = m * u / (1 - m * u);
    // Per-element quantization step bound d_k / 2 (d rounded up by one ulp to cover fl()).
    std::vector<double> half_d(n * w.in);
    for (size_t r = 0; r < n; ++r)
        for (size_t b = 0; b < nblk; ++b) {
            double amax = 0;
            for (size_t k = b * kb; k < (b + 1) * kb; ++k)
                amax = std::max(amax, std::fabs(double(x[r * w.in + k])));
            for (size_t k = b * kb; k < (b + 1) * kb; ++k)
                half_d[r * w.in + k] = amax / 127 * (1 + 2 * u) / 2;
        }
    CheckResult res;
    for (size_t o = 0; o < w.out; ++o)
        for (size_t r = 0; r < n; ++r) {
            double eq = 0, ef = bias ? std::fabs(double(bias[o])) : 0.0;
            for (size_t i = 0; i < w.in; ++i) {
                const size_t g = i / gs;
                const double s = bf16_to_f32(w.scales[o * groups + g]);
                const unsigned q = (w.qweight[o * (w.in / 2) + i / 2] >> (4 * (i & 1))) & 0xf;
                const double ax = std::fabs(double(x[r * w.in + i])), hd = half_d[r * w.in + i];
                eq += std::fabs(weight_ref(w, o, i)) * (hd + g3 * ax);
                ef += (q * s + w.zeros[o * groups + g] * s) * (ax * (1 + g3) + hd);
            }
            const double bound = eq + gm * ef;
            const double got = y[r * w.out + o], want = ref[r * w.out + o];
            const double err = std::fabs(got - want);
            const double ratio = std::isfinite(got) ? err / bound : INFINITY;
            if (!(ratio <= res.worst_ratio)) {
                res.worst_ratio = ratio;
                std::ostringstream os;
                os << "worst y[" << r << ", " << o << "]: got " << got << ", want " << want
                   << ", |err| " << err << ", bound " << bound;
                res.worst = os.str();
            }
        }
    res.ok = res.worst_ratio <= 1.0;
    return res;
}

std::vector<float> run_w4a8(Isa isa, const float* x, size_t n, const LinearWeight& w,
                            const float* bias, ThreadPool& pool) {
    ScopedIsa scoped(isa);
    std::vector<float> y(n * w.out(), NAN);
    linear_w4a8(x, n, w, bias, y.data(), pool);
    return y;
}

class W4A8Test : public ::testing::TestWithParam<Isa> {};

// Every ISA's W4A8 result is bit-identical to the scalar reference (the math up to the f32 part is
// exact integers, and the f32 part has one prescribed order), and the scalar one is within the
// derived bound of the exact product. Group sizes 16 and 24 give activation blocks of 16 and 8;
// 96 three blocks per group and a GEMM K chunk of 192; 512 a group wider than kKc.
TEST_P(W4A8Test, MatchesReferenceAndScalarBitExactly) {
    const Isa isa = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    struct Shape {
        size_t out, in, gs;
    };
    const Shape shapes[] = {{257, 64, 32}, {24, 2048, 64},  {9, 1024, 128},
                            {40, 320, 32}, {16, 2304, 128}, {17, 64, 16},
                            {33, 96, 24},  {20, 288, 96},   {24, 1024, 512}};
    const size_t ns[] = {1, 2, 3, 8, 9, 16, 100, 300};
    ThreadPool pool(2);
    uint32_t seed = 100;
    double worst = 0;
    for (const Shape& s : shapes) {
        const FileWeight fw = make_weight(WeightType::Q4, s.out, s.in, s.gs, seed++);
        const LinearWeight w(fw.view);
        const std::vector<float> bias = random_vector(s.out, seed++);
        for (size_t n : ns) {
            if (n >= 100 && s.in > 1024) continue;  // seconds in the double reference
            const std::vector<float> x = random_vector(n * s.in, seed++);
            for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
                const std::vector<float> y = run_w4a8(isa, x.data(), n, w, b, pool);
                const std::string what = std::string(isa_name(isa)) + " out " +
                                         std::to_string(s.out) + " in " + std::to_string(s.in) +
                                         " gs " + std::to_string(s.gs) + " n " + std::to_string(n) +
                                         (b ? " bias" : "");
                if (isa == Isa::Scalar) {
                    const CheckResult res = check_w4a8(x.data(), n, fw.view, b, y.data());
                    EXPECT_TRUE(res.ok)
                        << what << ": " << res.worst << " (ratio " << res.worst_ratio << ")";
                    worst = std::max(worst, res.worst_ratio);
                } else {
                    const std::vector<float> want = run_w4a8(Isa::Scalar, x.data(), n, w, b, pool);
                    size_t diff = 0;
                    for (size_t i = 0; i < y.size(); ++i)
                        diff += std::memcmp(&y[i], &want[i], sizeof(float)) != 0;
                    EXPECT_EQ(diff, 0u) << what << ": " << diff << " of " << y.size()
                                        << " outputs differ from the scalar reference";
                }
            }
        }
    }
    if (isa == Isa::Scalar) std::printf("[ info     ] W4A8 worst |err| / bound = %.3g\n", worst);
}

TEST_P(W4A8Test, BitIdenticalAcrossThreadCounts) {
    const Isa isa = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    const FileWeight fw = make_weight(WeightType::Q4, 257, 512, 64, 7);
    const LinearWeight w(fw.view);
    const std::vector<float> bias = random_vector(257, 8);
    ThreadPool p1(1), p2(2), p3(3);
    for (size_t n : {1, 5, 16, 37}) {
        const std::vector<float> x = random_vector(n * 512, 9 + n);
        const auto y1 = run_w4a8(isa, x.data(), n, w, bias.data(), p1);
        const auto y2 = run_w4a8(isa, x.data(), n, w, bias.data(), p2);
        const auto y3 = run_w4a8(isa, x.data(), n, w, bias.data(), p3);
        EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * 4), 0) << "n " << n;
        EXPECT_EQ(std::memcmp(y1.data(), y3.data(), y1.size() * 4), 0) << "n " << n;
    }
}

// The GEMV's split (ThreadPool::parallel_ranges over block pairs: a contiguous range per thread,
// take-overs of what is left) with fewer, as many and more pairs than threads, and its
// activation quantization (512-bit steps for 32-column blocks, gs 64; gs 16 keeps the 256-bit
// ones): bit-identical to the scalar path on 1, 2, 3 and 5 threads, single and fused.
TEST_P(W4A8Test, GemvSplitBitIdenticalForAnyThreadCount) {
    const Isa isa = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    ThreadPool p1(1), p2(2), p3(3), p5(5);
    uint32_t seed = 300;
    for (size_t gs : {16, 64})
        for (size_t out : {8, 16, 24, 40, 257}) {
            const FileWeight fw = make_weight(WeightType::Q4, out, 256, gs, seed++);
            const LinearWeight w(fw.view);
            const std::vector<float> bias = random_vector(out, seed++);
            for (size_t n : {1, 3, 8}) {
                const std::vector<float> x = random_vector(n * 256, seed++);
                const auto want = run_w4a8(Isa::Scalar, x.data(), n, w, bias.data(), p1);
                for (ThreadPool* pool : {&p1, &p2, &p3, &p5}) {
                    const auto y = run_w4a8(isa, x.data(), n, w, bias.data(), *pool);
                    EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * 4), 0)
                        << "gs " << gs << " out " << out << " n " << n << " threads "
                        << pool->size();
                    // The same weight twice in one fused call (q/k/v's path): each output as alone.
                    std::vector<float> y2(2 * n * out, NAN);
                    const LinearOut outs[2] = {{&w, bias.data(), y2.data()},
                                               {&w, nullptr, y2.data() + n * out}};
                    ScopedIsa scoped(isa);
                    linear_same_input(OpContext{pool, isa, ActMode::Int8}, x.data(), n, outs, 2);
                    EXPECT_EQ(std::memcmp(y2.data(), want.data(), y.size() * 4), 0)
                        << "fused gs " << gs << " out " << out << " n " << n;
                    const auto nb = run_w4a8(Isa::Scalar, x.data(), n, w, nullptr, p1);
                    EXPECT_EQ(std::memcmp(y2.data() + n * out, nb.data(), nb.size() * 4), 0)
                        << "fused, no bias, gs " << gs << " out " << out << " n " << n;
                }
            }
        }
}

// A K long enough for the GEMMs to split it into several chunks (the AVX-512 one takes about 4096
// columns per chunk and carries y between them), with ragged rows and outputs: bit-identical to
// the scalar path (the double reference would take seconds at this K).
TEST_P(W4A8Test, SeveralKChunksMatchScalarBitExactly) {
    const Isa isa = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    const size_t out = 41, in = 8448;
    ThreadPool pool(2);
    for (size_t gs : {64, 128}) {
        const FileWeight fw = make_weight(WeightType::Q4, out, in, gs, 11 + gs);
        const LinearWeight w(fw.view);
        const std::vector<float> bias = random_vector(out, 12);
        for (size_t n : {9, 13}) {
            const std::vector<float> x = random_vector(n * in, 13 + n);
            const auto y = run_w4a8(isa, x.data(), n, w, bias.data(), pool);
            const auto want = run_w4a8(Isa::Scalar, x.data(), n, w, bias.data(), pool);
            EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * 4), 0)
                << "gs " << gs << " n " << n;
        }
    }
}

// The largest integer sums the AVX2 path can meet: every code 15 and every x8 = +-127 (all |x|
// equal), where a block's i16 lanes reach 4 * 7620 = 30480; any saturation or wrap would show as
// a difference from the scalar int32 reference. One block of x is all zero (amax = 0, d = 0).
TEST_P(W4A8Test, ExtremeCodesAndActivations) {
    const Isa isa = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "CPU lacks " << isa_name(isa);
    const size_t out = 24, in = 256, gs = 64;
    FileWeight fw = make_weight(WeightType::Q4, out, in, gs, 5);
    std::fill(fw.qweight.begin(), fw.qweight.end(), 0xff);
    const LinearWeight w(fw.view);
    ThreadPool pool(2);
    for (size_t n : {1, 4, 16}) {
        std::vector<float> x(n * in);
        for (size_t i = 0; i < x.size(); ++i) x[i] = (i / 3) % 2 ? 0.75f : -0.75f;
        for (size_t k = 32; k < 64; ++k) x[k] = 0.0f;  // row 0, second block
        const auto y = run_w4a8(isa, x.data(), n, w, nullptr, pool);
        const auto want = run_w4a8(Isa::Scalar, x.data(), n, w, nullptr, pool);
        EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * 4), 0) << "n " << n;
        const CheckResult res = check_w4a8(x.data(), n, fw.view, nullptr, want.data());
        EXPECT_TRUE(res.ok) << "n " << n << ": " << res.worst;
    }
}

// The AMX tier against the AVX-512 one, bit for bit, where the tiles run (n >= 64, group sizes
// that are multiples of 32): row counts around the 64-row threshold and the 32-row tiles
// (zero-padded last tile),
// ragged panels of 32 outputs (out 8, 40, 257), three blocks per group (gs 96), K chunks (in 8448),
// with and without bias, on 1 and 3 threads; n < 64 and gs 16 take the AVX-512 kernel itself.
TEST(W4A8Amx, BitIdenticalToAvx512) {
    if (!cpu_supports(Isa::Amx)) GTEST_SKIP() << "CPU or OS lacks AMX";
    struct Shape {
        size_t out, in, gs;
    };
    const Shape shapes[] = {{40, 2048, 64},  {8, 512, 32},  {257, 256, 64}, {33, 192, 96},
                            {72, 8448, 128}, {24, 128, 16}, {48, 1024, 512}};
    ThreadPool p1(1), p3(3);
    uint32_t seed = 300;
    for (const Shape& s : shapes) {
        const FileWeight fw = make_weight(WeightType::Q4, s.out, s.in, s.gs, seed++);
        const LinearWeight w(fw.view);
        const std::vector<float> bias = random_vector(s.out, seed++);
        for (size_t n : {8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 77, 96, 300}) {
            if (s.in > 2048 && n > 65) continue;
            const std::vector<float> x = random_vector(n * s.in, seed++);
            for (const float* b : {bias.data(), static_cast<const float*>(nullptr)})
                for (ThreadPool* pool : {&p1, &p3}) {
                    const auto got = run_w4a8(Isa::Amx, x.data(), n, w, b, *pool);
                    const auto want = run_w4a8(Isa::Avx512, x.data(), n, w, b, *pool);
                    size_t diff = 0;
                    for (size_t i = 0; i < got.size(); ++i)
                        diff += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
                    EXPECT_EQ(diff, 0u)
                        << "out " << s.out << " in " << s.in << " gs " << s.gs << " n " << n
                        << (b ? " bias" : "") << " threads " << pool->size() << ": " << diff
                        << " of " << got.size() << " differ";
                }
        }
    }
}

// The GEMMs that copy x (AMX bf16 and W4A8 tiles, AVX-512 W4A8) run the rows in passes of a few
// hundred rows, so the copy is bounded by the layer's width, not by n: 256-row passes for the bf16
// tiles at in 8192; at in 11008, 384 rows for the W4A8 tiles, 576 (g64) and 384 (g16: 16-column
// blocks, quantized through the caller's scratch) for AVX-512. An odd n spanning two or three
// passes gives, row for row, bit-identical results to calls of 96 rows at a time (each within one
// pass; the 33-row tail on the same kernel, but for W4A8 on AMX: the bit-identical AVX-512 one),
// and W4A8 on AMX stays bit-identical to AVX-512; the op tests hold the bf16 tiles at in 8192
// across a pass boundary against the double reference.
TEST(GemmPasses, RowsAcrossPassBoundariesMatchOnePassCalls) {
    ThreadPool pool(2);
    struct Case {
        WeightType type;
        size_t n, in, gs;
        ActMode act;
        Bf16Act bf16_act;
        Isa isa;
    };
    const Case cases[] = {
        {WeightType::BF16, 609, 8192, 0, ActMode::F32, Bf16Act::Bf16, Isa::Amx},
        {WeightType::Q4, 609, 8192, 64, ActMode::Bf16, Bf16Act::F32, Isa::Amx},
        {WeightType::Q4, 801, 11008, 64, ActMode::Int8, Bf16Act::F32, Isa::Amx},
        {WeightType::Q4, 801, 11008, 64, ActMode::Int8, Bf16Act::F32, Isa::Avx512},
        {WeightType::Q4, 801, 11008, 16, ActMode::Int8, Bf16Act::F32, Isa::Avx512}};
    constexpr size_t out = 40, piece = 96;
    uint32_t seed = 1200;
    for (const Case& c : cases) {
        if (!cpu_supports(c.isa)) continue;
        const FileWeight fw = make_weight(c.type, out, c.in, c.gs, seed++);
        const LinearWeight w(fw.view);
        const std::vector<float> bias = random_vector(out, seed++);
        const std::vector<float> x = random_vector(c.n * c.in, seed++);
        auto run = [&](Isa isa, size_t r0, size_t m, float* y) {
            linear(OpContext{&pool, isa, c.act, c.bf16_act},
                   TensorRef::matrix(x.data() + r0 * c.in, m, c.in), w, bias.data(),
                   TensorRef::contiguous(y, {static_cast<int64_t>(m), static_cast<int64_t>(out)}));
        };
        std::vector<float> whole(c.n * out, NAN), pieces(c.n * out, NAN);
        run(c.isa, 0, c.n, whole.data());
        for (size_t r0 = 0; r0 < c.n; r0 += piece)
            run(c.isa, r0, std::min(piece, c.n - r0), pieces.data() + r0 * out);
        const std::string what = std::string(isa_name(c.isa)) + " " + weight_type_name(c.type) +
                                 " g" + std::to_string(c.gs) + " in " + std::to_string(c.in) +
                                 " n " + std::to_string(c.n);
        EXPECT_EQ(std::memcmp(whole.data(), pieces.data(), whole.size() * 4), 0) << what;
        if (c.isa == Isa::Amx && c.act == ActMode::Int8) {
            std::vector<float> vnni(c.n * out, NAN);
            run(Isa::Avx512, 0, c.n, vnni.data());
            EXPECT_EQ(std::memcmp(whole.data(), vnni.data(), whole.size() * 4), 0)
                << what << " vs AVX-512";
        }
    }
}

// ActMode::Auto is, call by call, exactly one of the two modes: Bf16 (the AMX bf16 tiles) on the
// amx ISA above the GEMV sizes, Int8 (W4A8) for n <= 8 and on every other ISA; bit for bit, with
// linear_same_input (the fused W4A8 GEMV at n <= 8) agreeing with linear() too.
TEST(ActModeAuto, PicksBf16TilesOnAmxAboveTheGemvAndInt8Otherwise) {
    const FileWeight fw = make_weight(WeightType::Q4, 40, 256, 64, 901);
    const LinearWeight w(fw.view);
    const std::vector<float> bias = random_vector(40, 902);
    ThreadPool pool(2);
    for (Isa isa : kAllIsas) {
        if (!cpu_supports(isa)) continue;
        for (size_t n : {1, 8, 9, 40}) {
            const std::vector<float> x = random_vector(n * 256, 903 + n);
            auto run = [&](ActMode m) {
                std::vector<float> y(n * 40);
                linear(OpContext{&pool, isa, m, Bf16Act::F32}, TensorRef::matrix(x.data(), n, 256),
                       w, bias.data(),
                       TensorRef::contiguous(y.data(), {static_cast<int64_t>(n), 40}));
                return y;
            };
            const ActMode want_mode =
                isa == Isa::Amx && n > detail::kGemvMaxRows ? ActMode::Bf16 : ActMode::Int8;
            EXPECT_EQ(resolve_act_mode(ActMode::Auto, isa, n), want_mode);
            const auto got = run(ActMode::Auto), want = run(want_mode),
                       other = run(want_mode == ActMode::Bf16 ? ActMode::Int8 : ActMode::Bf16);
            EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
                << isa_name(isa) << " n " << n;
            EXPECT_NE(std::memcmp(got.data(), other.data(), got.size() * 4), 0)
                << isa_name(isa) << " n " << n << ": the two modes agree, the test cannot tell";
            std::vector<float> ys(n * 40);
            const LinearOut o{&w, bias.data(), ys.data()};
            linear_same_input(OpContext{&pool, isa, ActMode::Auto, Bf16Act::F32}, x.data(), n, &o,
                              1);
            EXPECT_EQ(std::memcmp(ys.data(), want.data(), ys.size() * 4), 0)
                << isa_name(isa) << " n " << n << " (linear_same_input)";
        }
    }
}

// Bf16Act::Auto for BF16 weights is, call by call, exactly one of the two modes: Bf16 (the AMX
// bf16 tiles) on the amx ISA above the GEMV sizes, F32 for n <= 8 and on every other ISA.
TEST(Bf16ActAuto, PicksBf16TilesOnAmxAboveTheGemvAndF32Otherwise) {
    const FileWeight fw = make_weight(WeightType::BF16, 40, 256, 0, 911);
    const LinearWeight w(fw.view);
    const std::vector<float> bias = random_vector(40, 912);
    ThreadPool pool(2);
    for (Isa isa : kAllIsas) {
        if (!cpu_supports(isa)) continue;
        for (size_t n : {1, 8, 9, 40}) {
            const std::vector<float> x = random_vector(n * 256, 913 + n);
            auto run = [&](Bf16Act m) {
                std::vector<float> y(n * 40);
                linear(OpContext{&pool, isa, ActMode::F32, m}, TensorRef::matrix(x.data(), n, 256),
                       w, bias.data(),
                       TensorRef::contiguous(y.data(), {static_cast<int64_t>(n), 40}));
                return y;
            };
            const Bf16Act want_mode =
                isa == Isa::Amx && n > detail::kGemvMaxRows ? Bf16Act::Bf16 : Bf16Act::F32;
            EXPECT_EQ(resolve_bf16_act(Bf16Act::Auto, isa, n), want_mode);
            const auto got = run(Bf16Act::Auto), want = run(want_mode),
                       other = run(want_mode == Bf16Act::Bf16 ? Bf16Act::F32 : Bf16Act::Bf16);
            EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
                << isa_name(isa) << " n " << n;
            EXPECT_NE(std::memcmp(got.data(), other.data(), got.size() * 4), 0)
                << isa_name(isa) << " n " << n << ": the two modes agree, the test cannot tell";
        }
    }
    EXPECT_EQ(resolve_bf16_act(Bf16Act::F32, Isa::Amx, 1000), Bf16Act::F32);
    EXPECT_EQ(resolve_bf16_act(Bf16Act::Bf16, Isa::Scalar, 1), Bf16Act::Bf16);

    // A convolution decides once, as a GEMM: a frame of 5 pixels (a 5-row call, below the GEMV
    // bound) still runs bf16 on the tiles, like the VAE whose weights were rounded for it.
    const std::vector<float> wf = random_vector(6 * 7, 915);
    std::vector<uint16_t> wb;
    for (float f : wf) wb.push_back(f32_to_bf16(f));
    TensorView tv;
    tv.dtype = DType::BF16;
    tv.shape = {6, 7, 1, 1, 1};
    tv.data = reinterpret_cast<const uint8_t*>(wb.data());
    tv.nbytes = wb.size() * 2;
    const Conv3dWeight cw = Conv3dWeight::from_checkpoint(tv, nullptr);
    const std::vector<float> cx = random_vector(5 * 7, 916);
    for (Isa isa : kAllIsas) {
        if (!cpu_supports(isa)) continue;
        auto conv = [&](Bf16Act m) {
            std::vector<float> y(5 * 6);
            conv3d(OpContext{&pool, isa, ActMode::F32, m},
                   TensorRef::contiguous(cx.data(), {1, 1, 5, 7}), nullptr, cw, Conv3dParams{},
                   TensorRef::contiguous(y.data(), {1, 1, 5, 6}), false);
            return y;
        };
        const Bf16Act want = isa == Isa::Amx ? Bf16Act::Bf16 : Bf16Act::F32;
        EXPECT_EQ(conv(Bf16Act::Auto), conv(want)) << isa_name(isa);
        EXPECT_NE(conv(Bf16Act::Bf16), conv(Bf16Act::F32)) << isa_name(isa);
    }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, W4A8Test, ::testing::ValuesIn(kAllIsas),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

// linear() takes the W4A8 path exactly when the activation mode says Int8 and the weight is Q4;
// also reports W4A8's extra error over the f32 path (relative L2 against the double reference).
TEST(W4A8, ActivationModeSelectsPathAndErrorIsSmall) {
    const size_t out = 256, in = 2048, gs = 64;
    const FileWeight fw = make_weight(WeightType::Q4, out, in, gs, 41);
    const LinearWeight w(fw.view);
    const FileWeight fb = make_weight(WeightType::BF16, out, in, 0, 42);
    const LinearWeight wb(fb.view);
    ThreadPool pool(2);
    for (size_t n : {1, 16}) {
        const std::vector<float> x = random_vector(n * in, 43 + n);
        std::vector<float> y_f32(n * out), y_int8(n * out), y_direct(n * out);
        std::vector<float> yb_f32(n * out), yb_int8(n * out);
        {
            ScopedAct act(ActMode::F32);
            EXPECT_EQ(activation_mode(), ActMode::F32);
            linear(x.data(), n, w, nullptr, y_f32.data(), pool);
            linear(x.data(), n, wb, nullptr, yb_f32.data(), pool);
        }
        {
            ScopedAct act(ActMode::Int8);
            EXPECT_EQ(activation_mode(), ActMode::Int8);
            linear(x.data(), n, w, nullptr, y_int8.data(), pool);
            linear(x.data(), n, wb, nullptr, yb_int8.data(), pool);
        }
        linear_w4a8(x.data(), n, w, nullptr, y_direct.data(), pool);
        EXPECT_EQ(std::memcmp(y_int8.data(), y_direct.data(), y_int8.size() * 4), 0);
        EXPECT_NE(std::memcmp(y_int8.data(), y_f32.data(), y_int8.size() * 4), 0);
        // BF16 weights ignore the mode.
        EXPECT_EQ(std::memcmp(yb_int8.data(), yb_f32.data(), yb_int8.size() * 4), 0);
        std::vector<double> ref(n * out);
        linear_ref(x.data(), n, fw.view, nullptr, ref.data());
        double e_f32 = 0, e_int8 = 0, norm = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
            e_f32 += (y_f32[i] - ref[i]) * (y_f32[i] - ref[i]);
            e_int8 += (y_int8[i] - ref[i]) * (y_int8[i] - ref[i]);
            norm += ref[i] * ref[i];
        }
        const double rel_f32 = std::sqrt(e_f32 / norm), rel_int8 = std::sqrt(e_int8 / norm);
        std::printf("[ info     ] n %zu relative L2 error: f32 path %.3g, W4A8 %.3g\n", n, rel_f32,
                    rel_int8);
        // Uniform rounding of x by d/2 (d ~ max|x| / 127) gives ~ 1/(127 sqrt(12)) = 2.3e-3
        // relative per input; with random signs the output error stays in that range.
        EXPECT_LT(rel_int8, 1e-2);
    }
    EXPECT_THROW(linear_w4a8(nullptr, 1, wb, nullptr, nullptr, pool), Error);
}

TEST(LinearWeight, RepackRoundTrips) {
    for (WeightType type : kAllTypes)
        for (size_t gs : {32, 64, 128}) {
            const size_t out = 257, in = 384;
            const FileWeight fw = make_weight(type, out, in, gs, 21 + gs);
            const LinearWeight w(fw.view);
            std::vector<float> row(in);
            for (size_t o = 0; o < out; ++o) {
                w.dequantize_row(o, row.data());
                for (size_t i = 0; i < in; ++i)
                    ASSERT_EQ(double(row[i]), weight_ref(fw.view, o, i))
                        << weight_type_name(type) << " gs " << gs << " at (" << o << ", " << i
                        << ")";
            }
            if (type != WeightType::Q4 && type != WeightType::Int5) break;  // group sizes
        }
}

TEST(LinearWeight, NibbleOrderMatchesSpec) {
    // The spec's example: codes [1,2,3,4,15,0,...] pack to bytes 0x21, 0x43, 0x0F.
    std::vector<uint8_t> q(16, 0);
    q[0] = 0x21;
    q[1] = 0x43;
    q[2] = 0x0f;
    const uint16_t scale = f32_to_bf16(1.0f);
    const uint8_t zero = 0;
    const LinearWeight w = LinearWeight::from_awq_int4(q.data(), &scale, &zero, 1, 32, 32);
    std::vector<float> row(32);
    w.dequantize_row(0, row.data());
    const float want[6] = {1, 2, 3, 4, 15, 0};
    for (int i = 0; i < 6; ++i) EXPECT_EQ(row[i], want[i]) << i;
}

TEST(LinearWeight, NaiveBf16DequantRoundsLikeTorch) {
    const FileWeight fw = make_weight(WeightType::Q4, 100, 256, 64, 31);
    const LinearWeight w(fw.view);
    ThreadPool pool(2);
    for (Isa isa : kAllIsas) {
        if (!cpu_supports(isa)) continue;
        ScopedIsa scoped(isa);
        const LinearWeight b = dequantize_to_bf16(w, pool);
        ASSERT_EQ(b.type(), WeightType::BF16);
        std::vector<float> row(256);
        for (size_t o = 0; o < 100; ++o) {
            b.dequantize_row(o, row.data());
            for (size_t i = 0; i < 256; ++i)
                ASSERT_EQ(row[i], round_bf16(float(weight_ref(fw.view, o, i))))
                    << isa_name(isa) << " at (" << o << ", " << i << ")";
        }
    }
}

TEST(LinearWeight, RejectsBadShapes) {
    std::vector<uint8_t> q(64 * 32, 0x11), z(64, 3);
    std::vector<uint16_t> s(64, f32_to_bf16(0.5f));
    EXPECT_THROW(LinearWeight::from_awq_int4(q.data(), s.data(), z.data(), 2, 64, 48), Error);
    EXPECT_THROW(LinearWeight::from_awq_int4(q.data(), s.data(), z.data(), 2, 64, 12), Error);
    EXPECT_THROW(LinearWeight::from_awq_int4(q.data(), s.data(), z.data(), 0, 64, 32), Error);
    z[1] = 16;
    try {
        LinearWeight::from_awq_int4(q.data(), s.data(), z.data(), 2, 64, 32);
        ADD_FAILURE() << "zero-point 16 accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("row 0, group 1"), std::string::npos) << e.what();
    }
}

// The Int5 and Nvfp4 repacks decode to exactly what quant/q4.cc's decoders (written from the
// spec, §1.2 and §1.3) give for the same file tensors.
TEST(LinearWeight, Int5AndNvfp4DecodeLikeTheSpecDecoders) {
    const size_t out = 37, in = 192;
    {
        const FileWeight fw = make_weight(WeightType::Int5, out, in, 64, 51);
        quant::Int5Matrix m;
        m.out = out, m.in = in, m.group_size = 64;
        m.qweight = fw.qweight, m.scales = fw.scales, m.zeros = fw.zeros;
        quant::validate(m, "int5");
        const std::vector<float> want = quant::dequantize(m);
        const LinearWeight w(fw.view);
        std::vector<float> row(in);
        for (size_t o = 0; o < out; ++o) {
            w.dequantize_row(o, row.data());
            for (size_t i = 0; i < in; ++i) ASSERT_EQ(row[i], want[o * in + i]) << o << ", " << i;
        }
    }
    {
        const FileWeight fw = make_weight(WeightType::Nvfp4, out, in, 0, 52);
        quant::Nvfp4Matrix m;
        m.out = out, m.in = in;
        m.qweight = fw.qweight, m.scales_bf16 = fw.scales;
        quant::validate(m, "nvfp4");
        const std::vector<float> want = quant::dequantize(m);
        const LinearWeight w(fw.view);
        std::vector<float> row(in);
        for (size_t o = 0; o < out; ++o) {
            w.dequantize_row(o, row.data());
            for (size_t i = 0; i < in; ++i) ASSERT_EQ(row[i], want[o * in + i]) << o << ", " << i;
        }
    }
}

// The spec's NVFP4 code table by hand: codes 0..15 of one row with scale 0.25, in the INT4 nibble
// order (even column = low nibble); code 8 is -0. Every ISA's linear() with x = e_i reads them.
TEST(LinearWeight, Nvfp4CodeTableByHand) {
    std::vector<uint8_t> q(8 + 8);  // two rows of 16 codes
    for (int j = 0; j < 8; ++j) {
        q[j] = uint8_t((2 * j) | ((2 * j + 1) << 4));
        q[8 + j] = uint8_t((15 - 2 * j) | ((14 - 2 * j) << 4));
    }
    const uint16_t scales[2] = {f32_to_bf16(0.25f), f32_to_bf16(2.0f)};
    const float table[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    const LinearWeight w = LinearWeight::from_nvfp4(q.data(), scales, 2, 16);
    std::vector<float> row(16);
    w.dequantize_row(0, row.data());
    for (int i = 0; i < 16; ++i) EXPECT_EQ(row[i], table[i] * 0.25f) << i;
    EXPECT_TRUE(std::signbit(row[8]));
    w.dequantize_row(1, row.data());
    for (int i = 0; i < 16; ++i) EXPECT_EQ(row[i], table[15 - i] * 2.0f) << i;
    for (Isa isa : kAllIsas) {
        if (!cpu_supports(isa)) continue;
        ScopedIsa scoped(isa);
        for (size_t i = 0; i < 16; ++i) {
            std::vector<float> x(16, 0.0f), y(2);
            x[i] = 1.0f;
            linear(x.data(), 1, w, nullptr, y.data());
            EXPECT_EQ(y[0], table[i] * 0.25f) << isa_name(isa) << " column " << i;
            EXPECT_EQ(y[1], table[15 - i] * 2.0f) << isa_name(isa) << " column " << i;
        }
    }
}

TEST(LinearWeight, Int5AndNvfp4RejectBadInput) {
    std::vector<uint8_t> q(2 * 64, 7), z(8, 3);
    std::vector<uint16_t> s(8, f32_to_bf16(0.5f));
    EXPECT_THROW(LinearWeight::from_awq_int5(q.data(), s.data(), z.data(), 2, 64, 12), Error);
    EXPECT_THROW(LinearWeight::from_awq_int5(q.data(), s.data(), z.data(), 2, 64, 48), Error);
    EXPECT_NO_THROW(LinearWeight::from_awq_int5(q.data(), s.data(), z.data(), 2, 64, 16));
    z[5] = 32;
    try {
        LinearWeight::from_awq_int5(q.data(), s.data(), z.data(), 2, 64, 16);
        ADD_FAILURE() << "zero-point 32 accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("row 1, group 1"), std::string::npos) << e.what();
    }
    z[5] = 31;
    q[64 + 10] = 32;
    try {
        LinearWeight::from_awq_int5(q.data(), s.data(), z.data(), 2, 64, 16);
        ADD_FAILURE() << "code 32 accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("row 1, column 10"), std::string::npos) << e.what();
    }
    EXPECT_THROW(LinearWeight::from_nvfp4(q.data(), s.data(), 2, 40), Error);
    EXPECT_THROW(LinearWeight::from_nvfp4(q.data(), s.data(), 0, 64), Error);
    EXPECT_NO_THROW(LinearWeight::from_nvfp4(q.data(), s.data(), 2, 64));
}

TEST(Dispatch, ForcingAnUnsupportedIsaFails) {
    for (Isa isa : kAllIsas) {
        if (cpu_supports(isa)) {
            EXPECT_NO_THROW(force_isa(isa));
            EXPECT_EQ(active_isa(), isa);
        } else {
            EXPECT_THROW(force_isa(isa), Error);
        }
    }
    clear_forced_isa();
    EXPECT_TRUE(cpu_supports(Isa::Scalar));
    ThreadPool pool(3);
    const std::string d = runtime_description(pool);
    EXPECT_EQ(d.rfind("ISA ", 0), 0u) << d;
    EXPECT_NE(d.find(", 3 threads"), std::string::npos) << d;
}

// linear_same_input (q/k/v, gate/up in one call): every output bit-identical to its own linear()
// call, on every ISA, in both activation modes, at decode (n <= 8, the fused W4A8 job on
// AVX-512) and prefill sizes, with an odd block count (out 17) and two thread counts; weights of
// different group sizes or types fall back to one call each, still bit-identical.
TEST(LinearSameInput, EachOutputMatchesItsOwnLinearBitExactly) {
    const size_t in = 256;
    const FileWeight fq = make_weight(WeightType::Q4, 40, in, 64, 21),
                     fk = make_weight(WeightType::Q4, 16, in, 64, 22),
                     fv = make_weight(WeightType::Q4, 17, in, 64, 23),
                     f32 = make_weight(WeightType::Q4, 24, in, 32, 24),
                     fb = make_weight(WeightType::BF16, 8, in, 0, 25);
    const LinearWeight wq(fq.view), wk(fk.view), wv(fv.view), w32(f32.view), wb(fb.view);
    const std::vector<float> bq = random_vector(40, 26), bv = random_vector(17, 27);
    const std::vector<std::vector<const LinearWeight*>> sets = {
        {&wq, &wk, &wv}, {&wq, &w32}, {&wk, &wb, &wv}};
    ThreadPool p1(1), p2(2);
    for (Isa isa : kAllIsas) {
        if (!cpu_supports(isa)) continue;
        for (ActMode act : {ActMode::F32, ActMode::Int8})
            for (ThreadPool* pool : {&p1, &p2})
                for (const auto& set : sets)
                    for (size_t n : {1, 3, 8, 9}) {
                        const OpContext ctx{pool, isa, act};
                        const std::vector<float> x = random_vector(n * in, 28 + n);
                        std::vector<std::vector<float>> got(set.size()), want(set.size());
                        std::vector<LinearOut> outs;
                        for (size_t k = 0; k < set.size(); ++k) {
                            const LinearWeight& w = *set[k];
                            const float* bias = &w == &wq   ? bq.data()
                                                : &w == &wv ? bv.data()
                                                            : nullptr;
                            got[k].assign(n * w.out(), NAN);
                            want[k].assign(n * w.out(), NAN);
                            outs.push_back({&w, bias, got[k].data()});
                            linear(ctx, TensorRef::matrix(x.data(), n, in), w, bias,
                                   TensorRef::matrix(want[k].data(), n, w.out()));
                        }
                        linear_same_input(ctx, x.data(), n, outs.data(), outs.size());
                        for (size_t k = 0; k < set.size(); ++k)
                            EXPECT_EQ(std::memcmp(got[k].data(), want[k].data(), got[k].size() * 4),
                                      0)
                                << isa_name(isa) << " " << act_mode_name(act) << " threads "
                                << pool->size() << " n " << n << " output " << k;
                    }
    }
    const FileWeight fo = make_weight(WeightType::Q4, 8, 128, 64, 29);
    const LinearWeight wo(fo.view);
    std::vector<float> x(256), y1(40), y2(8);
    const LinearOut bad[2] = {{&wq, nullptr, y1.data()}, {&wo, nullptr, y2.data()}};
    EXPECT_THROW(linear_same_input(OpContext::defaults(), x.data(), 1, bad, 2), Error);
}

// The AVX2 tier's W4A8 kernels with AVX-VNNI (vpdpbusd ymm) and without (vpmaddubsw + vpaddw +
// vpmaddwd) compute the same exact int32 per block and the same f32 order, so they must agree to
// the bit: GEMV (n <= 8, one weight and the fused several-weight job) and GEMM (ragged rows and
// outputs, several K chunks), group sizes 32/64/128 (activation blocks of 32), and 16 (blocks of
// 16: the i16 path's other chunk count), every code 15 with x8 = +-127 (the largest block sums).
TEST(W4A8AvxVnni, MatchesPlainAvx2BitExactly) {
    if (!cpu_supports(Isa::Avx2) || !detail::avx_vnni()) GTEST_SKIP() << "CPU lacks AVX-VNNI";
    ThreadPool pool(2);
    auto run = [&](bool vnni, const float* x, size_t n, const LinearWeight& w, const float* bias) {
        std::vector<float> y(n * w.out(), NAN);
        const detail::W4A8Scratch s = detail::w4a8_scratch(n, w.in(), w.group_size());
        (vnni ? &detail::w4a8_avxvnni : &detail::w4a8_avx2)(x, n, w.packed(), bias, y.data(), s,
                                                            pool);
        return y;
    };
    size_t cases = 0;
    for (size_t gs : {16, 32, 64, 128})
        for (bool extreme : {false, true}) {
            const size_t out = 43, in = gs == 16 ? 512 : 8448;
            FileWeight fw = make_weight(WeightType::Q4, out, in, gs, 31 + gs);
            if (extreme) std::fill(fw.qweight.begin(), fw.qweight.end(), uint8_t{0xff});
            const LinearWeight w(fw.view);
            const std::vector<float> bias = random_vector(out, 32);
            for (size_t n : {1, 3, 8, 9, 20}) {
                std::vector<float> x = random_vector(n * in, 33 + n);
                if (extreme)
                    for (float& v : x) v = v < 0 ? -0.75f : 0.75f;
                const auto a = run(false, x.data(), n, w, bias.data());
                const auto b = run(true, x.data(), n, w, bias.data());
                EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0)
                    << "gs " << gs << " n " << n << " extreme " << extreme;
                ++cases;
            }
        }
    // The fused GEMV of several weights sharing x (q/k/v at decode).
    const FileWeight f1 = make_weight(WeightType::Q4, 24, 256, 64, 41),
                     f2 = make_weight(WeightType::Q4, 17, 256, 64, 42);
    const LinearWeight w1(f1.view), w2(f2.view);
    for (size_t n : {1, 5}) {
        const std::vector<float> x = random_vector(n * 256, 43 + n);
        std::vector<float> y[2][2];
        for (int v = 0; v < 2; ++v) {
            y[v][0].assign(n * 24, NAN);
            y[v][1].assign(n * 17, NAN);
            const detail::W4A8Out outs[2] = {{w1.packed(), nullptr, y[v][0].data()},
                                             {w2.packed(), nullptr, y[v][1].data()}};
            const detail::W4A8Scratch s = detail::w4a8_scratch(n, 256, 64);
            (v ? &detail::w4a8_gemv_many_avxvnni : &detail::w4a8_gemv_many_avx2)(x.data(), n, outs,
                                                                                 2, s, pool);
        }
        for (int k = 0; k < 2; ++k)
            EXPECT_EQ(std::memcmp(y[0][k].data(), y[1][k].data(), y[0][k].size() * 4), 0)
                << "fused n " << n << " output " << k;
    }
    EXPECT_EQ(cases, 40u);
    // And dispatch hands the AVX2 tier the AVX-VNNI kernels on this CPU.
    EXPECT_EQ(detail::w4a8_kernel(Isa::Avx2), &detail::w4a8_avxvnni);
    EXPECT_EQ(detail::w4a8_gemv_many_kernel(Isa::Avx2), &detail::w4a8_gemv_many_avxvnni);
}

}  // namespace
}  // namespace lancet::kernels
