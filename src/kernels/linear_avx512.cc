// AVX-512 linear kernels: GEMV over pairs of 8-row blocks (16 rows per zmm), 12x32 panel GEMM;
// W4A8 with vpdpbusd (512-bit GEMV over block pairs, the 256-bit VNNI GEMM of the shared header).
// GCC 12 reports _mm512_undefined_epi32() inside its own intrinsics as maybe-uninitialized when
// they are inlined (a known false positive of the intrinsics headers); nothing here reads it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstring>
#include <utility>

#include "kernels/linear_kernels.h"
#include "kernels/linear_w4a8_x86_impl.h"

namespace lancet::kernels::detail {
namespace {

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 8 bf16 of block a then 8 of block b, as 16 f32.
inline __m512 bf16_pair_to_f32(const uint16_t* a, const uint16_t* b) {
    const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(load128(a)), load128(b), 1);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m512 u8_pair_to_f32(const uint8_t* a, const uint8_t* b) {
    const __m128i v = _mm_unpacklo_epi64(
        _mm_loadl_epi64(static_cast<const __m128i*>(static_cast<const void*>(a))),
        _mm_loadl_epi64(static_cast<const __m128i*>(static_cast<const void*>(b))));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}

inline __m512i load_pair(const __m256i* a, const __m256i* b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_load_si256(a)), _mm256_load_si256(b),
                              1);
}

// See linear_x86_impl.h: column T of a Q4 tile, masked in place, so scaled by 2^(4T) (T < 7).
template <int T>
inline __m512 q4_column_scaled(__m512i v) {
    if constexpr (T == 7) {
        return _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 28));
    } else {
        return _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xf << (4 * T))));
    }
}
constexpr float kColumnUnscale[8] = {1.0f,         1.0f / 16,      1.0f / 256,      1.0f / 4096,
                                     1.0f / 65536, 1.0f / 1048576, 1.0f / 16777216, 1.0f};

// Int5 (see linear_x86_impl.h): column T of an 8-row x 4-column tile masked in place, scaled by
// 2^(8T) (column 3 shifted down, scale 1).
template <int T>
inline __m512 int5_column_scaled(__m512i v) {
    if constexpr (T == 3) {
        return _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 24));
    } else {
        return _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xff << (8 * T))));
    }
}
constexpr float kInt5Unscale[8] = {1.0f, 1.0f / 256, 1.0f / 65536, 1.0f,
                                   1.0f, 1.0f / 256, 1.0f / 65536, 1.0f};

// Nvfp4: the signed E2M1 values of the 16 codes; vpermps reads only an index's low 4 bits, so
// code T of a word needs just a shift.
inline __m512 nvfp4_value_table() {
    return _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f,
                          -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
}

template <typename F>
inline void unroll4(F&& f) {
    [&]<int... T>(std::integer_sequence<int, T...>) { (f.template operator()<T>(), ...); }
    (std::make_integer_sequence<int, 4>{});
}

template <typename F>
inline void unroll8(F&& f) {
    [&]<int... T>(std::integer_sequence<int, T...>) { (f.template operator()<T>(), ...); }
    (std::make_integer_sequence<int, 8>{});
}

constexpr int accumulators(int rows) { return rows == 1 ? 8 : rows == 2 ? 4 : 2; }

template <int NA>
inline __m512 sum_accumulators(const __m512* a) {
    if constexpr (NA == 1) {
        return a[0];
    } else {
        __m512 s[NA / 2];
#pragma GCC unroll 8
        for (int i = 0; i < NA / 2; ++i) s[i] = _mm512_add_ps(a[i], a[i + NA / 2]);
        return sum_accumulators<NA / 2>(s);
    }
}

// ---- GEMV over the block pair (ba, bb): 16 output rows per vector --------------------------

template <int NR>
void gemv_q4_pair(const PackedView& p, size_t ba, size_t bb, const float* xs, const float* xsum,
                  float* out) {
    constexpr int NA = accumulators(NR);
    const size_t in = p.in, groups = in / p.group_size, cpg = p.group_size / 8;
    const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data));
    const __m256i* qa = q + ba * (in / 8);
    const __m256i* qb = q + bb * (in / 8);
    __m512 tot[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) tot[r] = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m512 acc[NR][NA];
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
            for (int a = 0; a < NA; ++a) acc[r][a] = _mm512_setzero_ps();
        for (size_t c = 0; c < cpg; ++c) {
            const size_t chunk = g * cpg + c;
            const __m512i v = load_pair(qa + chunk, qb + chunk);
            const float* xk = xs + chunk * 8;
            unroll8([&]<int T>() {
                const __m512 qf = q4_column_scaled<T>(v);
#pragma GCC unroll 8
                for (int r = 0; r < NR; ++r)
                    acc[r][T % NA] =
                        _mm512_fmadd_ps(qf, _mm512_set1_ps(xk[r * in + T]), acc[r][T % NA]);
            });
        }
        const __m512 s = bf16_pair_to_f32(p.scales + (ba * groups + g) * kRowBlock,
                                          p.scales + (bb * groups + g) * kRowBlock);
        const __m512 zs = _mm512_mul_ps(u8_pair_to_f32(p.zeros + (ba * groups + g) * kRowBlock,
                                                       p.zeros + (bb * groups + g) * kRowBlock),
                                        s);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
            tot[r] = _mm512_fmadd_ps(s, sum_accumulators<NA>(acc[r]), tot[r]);
            tot[r] = _mm512_fnmadd_ps(zs, _mm512_set1_ps(xsum[r * groups + g]), tot[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * 16, tot[r]);
}

// Int5, factored per group as Q4; xs = x * kInt5Unscale; two chunks (8 columns) per step.
template <int NR>
void gemv_int5_pair(const PackedView& p, size_t ba, size_t bb, const float* xs, const float* xsum,
                    float* out) {
    constexpr int NA = accumulators(NR);
    const size_t in = p.in, groups = in / p.group_size, cpg = p.group_size / 4;
    const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data));
    const __m256i* qa = q + ba * (in / 4);
    const __m256i* qb = q + bb * (in / 4);
    __m512 tot[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) tot[r] = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m512 acc[NR][NA];
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
            for (int a = 0; a < NA; ++a) acc[r][a] = _mm512_setzero_ps();
        for (size_t c = 0; c < cpg; c += 2) {
            const size_t chunk = g * cpg + c;
            const __m512i v0 = load_pair(qa + chunk, qb + chunk);
            const __m512i v1 = load_pair(qa + chunk + 1, qb + chunk + 1);
            const float* xk = xs + chunk * 4;
            unroll4([&]<int T>() {
                const __m512 q0 = int5_column_scaled<T>(v0), q1 = int5_column_scaled<T>(v1);
#pragma GCC unroll 8
                for (int r = 0; r < NR; ++r) {
                    acc[r][T % NA] =
                        _mm512_fmadd_ps(q0, _mm512_set1_ps(xk[r * in + T]), acc[r][T % NA]);
                    acc[r][(T + 4) % NA] = _mm512_fmadd_ps(q1, _mm512_set1_ps(xk[r * in + 4 + T]),
                                                           acc[r][(T + 4) % NA]);
                }
            });
        }
        const __m512 s = bf16_pair_to_f32(p.scales + (ba * groups + g) * kRowBlock,
                                          p.scales + (bb * groups + g) * kRowBlock);
        const __m512 zs = _mm512_mul_ps(u8_pair_to_f32(p.zeros + (ba * groups + g) * kRowBlock,
                                                       p.zeros + (bb * groups + g) * kRowBlock),
                                        s);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
            tot[r] = _mm512_fmadd_ps(s, sum_accumulators<NA>(acc[r]), tot[r]);
            tot[r] = _mm512_fnmadd_ps(zs, _mm512_set1_ps(xsum[r * groups + g]), tot[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * 16, tot[r]);
}

// Nvfp4: the signed table value of each code (vpermps), summed against x per 16-column block and
// scaled once per block: y += s * sum(value * x). At most four accumulators per row of x, so the
// reduction at the end of each short block stays cheap.
template <int NR>
void gemv_nvfp4_pair(const PackedView& p, size_t ba, size_t bb, const float* x, float* out) {
    constexpr int NA = accumulators(NR) < 4 ? accumulators(NR) : 4;
    const size_t in = p.in, blocks = in / kNvfp4Block;
    const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data));
    const __m256i* qa = q + ba * (in / 8);
    const __m256i* qb = q + bb * (in / 8);
    const __m512 table = nvfp4_value_table();
    __m512 tot[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) tot[r] = _mm512_setzero_ps();
    for (size_t k = 0; k < blocks; ++k) {
        __m512 acc[NR][NA];
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
            for (int a = 0; a < NA; ++a) acc[r][a] = _mm512_setzero_ps();
#pragma GCC unroll 2
        for (int c = 0; c < 2; ++c) {
            const __m512i v = load_pair(qa + 2 * k + c, qb + 2 * k + c);
            const float* xk = x + k * kNvfp4Block + 8 * c;
            unroll8([&]<int T>() {
                const __m512i idx = T == 0 ? v : _mm512_srli_epi32(v, 4 * T);
                const __m512 w = _mm512_permutexvar_ps(idx, table);
#pragma GCC unroll 8
                for (int r = 0; r < NR; ++r)
                    acc[r][T % NA] =
                        _mm512_fmadd_ps(w, _mm512_set1_ps(xk[r * in + T]), acc[r][T % NA]);
            });
        }
        const __m512 s = bf16_pair_to_f32(p.scales + (ba * blocks + k) * kRowBlock,
                                          p.scales + (bb * blocks + k) * kRowBlock);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
            tot[r] = _mm512_fmadd_ps(s, sum_accumulators<NA>(acc[r]), tot[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * 16, tot[r]);
}

template <int NR, bool kBf16>
void gemv_dense_pair(const PackedView& p, size_t ba, size_t bb, const float* x, float* out) {
    constexpr int NA = accumulators(NR);
    const size_t in = p.in;
    const float* fa = static_cast<const float*>(p.data) + ba * in * kRowBlock;
    const float* fb = static_cast<const float*>(p.data) + bb * in * kRowBlock;
    const uint16_t* ha = static_cast<const uint16_t*>(p.data) + ba * in * kRowBlock;
    const uint16_t* hb = static_cast<const uint16_t*>(p.data) + bb * in * kRowBlock;
    auto load = [&](size_t k) {
        if constexpr (kBf16)
            return bf16_pair_to_f32(ha + k * kRowBlock, hb + k * kRowBlock);
        else
            return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_load_ps(fa + k * kRowBlock)),
                                      _mm256_load_ps(fb + k * kRowBlock), 1);
    };
    __m512 acc[NR][NA];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
        for (int a = 0; a < NA; ++a) acc[r][a] = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + NA <= in; k += NA)
#pragma GCC unroll 8
        for (int a = 0; a < NA; ++a) {
            const __m512 w = load(k + a);
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r)
                acc[r][a] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[r * in + k + a]), acc[r][a]);
        }
    for (; k < in; ++k) {
        const __m512 w = load(k);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
            acc[r][0] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[r * in + k]), acc[r][0]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * 16, sum_accumulators<NA>(acc[r]));
}

template <int NR>
void gemv_pair(const PackedView& p, size_t ba, size_t bb, const float* x, const float* xs,
               const float* xsum, float* out) {
    switch (p.type) {
        case WeightType::F32:
            gemv_dense_pair<NR, false>(p, ba, bb, x, out);
            break;
        case WeightType::BF16:
            gemv_dense_pair<NR, true>(p, ba, bb, x, out);
            break;
        case WeightType::Q4:
            gemv_q4_pair<NR>(p, ba, bb, xs, xsum, out);
            break;
        case WeightType::Int5:
            gemv_int5_pair<NR>(p, ba, bb, xs, xsum, out);
            break;
        case WeightType::Nvfp4:
            gemv_nvfp4_pair<NR>(p, ba, bb, x, out);
            break;
    }
}

void gemv(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
          float* scratch, ThreadPool& pool) {
    const size_t in = p.in;
    const float* xs = nullptr;
    const float* xsum = nullptr;
    const bool factored = p.type == WeightType::Q4 || p.type == WeightType::Int5;
    const size_t groups = factored ? in / p.group_size : 0;
    if (factored) {
        const size_t gs = p.group_size;
        float* s = scratch;
        float* sums = scratch + n * in;
        const __m256 unscale =
            _mm256_loadu_ps(p.type == WeightType::Q4 ? kColumnUnscale : kInt5Unscale);
        for (size_t r = 0; r < n; ++r)
            for (size_t g = 0; g < groups; ++g) {
                __m256 sum = _mm256_setzero_ps();
                for (size_t k = g * gs; k < (g + 1) * gs; k += 8) {
                    const __m256 v = _mm256_loadu_ps(x + r * in + k);
                    sum = _mm256_add_ps(sum, v);
                    _mm256_storeu_ps(s + r * in + k, _mm256_mul_ps(v, unscale));
                }
                alignas(32) float lanes[8];
                _mm256_store_ps(lanes, sum);
                sums[r * groups + g] = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
                                       ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            }
        xs = s;
        xsum = sums;
    }
    pool.parallel_for(
        p.n_blocks,
        [&](size_t b0, size_t b1) {
            alignas(64) float out[4 * 16];
            for (size_t b = b0; b < b1; b += 2) {
                const size_t bb = b + 1 < b1 ? b + 1 : b;  // odd tail: compute b twice
                for (size_t r0 = 0; r0 < n; r0 += 4) {
                    const size_t nr = std::min<size_t>(4, n - r0);
                    const float* xr = x + r0 * in;
                    const float* xsr = xs ? xs + r0 * in : nullptr;
                    const float* xsumr = xsum ? xsum + r0 * groups : nullptr;
                    switch (nr) {
                        case 1:
                            gemv_pair<1>(p, b, bb, xr, xsr, xsumr, out);
                            break;
                        case 2:
                            gemv_pair<2>(p, b, bb, xr, xsr, xsumr, out);
                            break;
                        case 3:
                            gemv_pair<3>(p, b, bb, xr, xsr, xsumr, out);
                            break;
                        default:
                            gemv_pair<4>(p, b, bb, xr, xsr, xsumr, out);
                            break;
                    }
                    for (size_t half = 0; half < (bb != b ? 2u : 1u); ++half) {
                        const size_t blk = b + half;
                        const size_t rows = std::min(kRowBlock, p.out - blk * kRowBlock);
                        for (size_t r = 0; r < nr; ++r) {
                            float* yr = y + (r0 + r) * p.out + blk * kRowBlock;
                            const float* o = out + r * 16 + half * 8;
                            for (size_t j = 0; j < rows; ++j)
                                yr[j] = o[j] + (bias ? bias[blk * kRowBlock + j] : 0.0f);
                        }
                    }
                }
            }
        },
        2);
}

// ---- GEMM: 32-output x kc panels (four blocks) in f32, 12x32 register tiles ------------------

constexpr size_t kPanel = 32;
constexpr size_t kMr = 12;

// x is packed: x[k * kMr + i] is row i, column k of the tile.
template <int MR>
void micro_kernel(const float* x, const float* panel, size_t kc, float* c, size_t ldc, bool init,
                  const float* bias32) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        c0[i] = init ? _mm512_load_ps(bias32) : _mm512_loadu_ps(c + i * ldc);
        c1[i] = init ? _mm512_load_ps(bias32 + 16) : _mm512_loadu_ps(c + i * ldc + 16);
    }
    for (size_t k = 0; k < kc; ++k) {
        const __m512 a = _mm512_load_ps(panel + k * kPanel);
        const __m512 b = _mm512_load_ps(panel + k * kPanel + 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m512 xv = _mm512_set1_ps(x[k * kMr + i]);
            c0[i] = _mm512_fmadd_ps(a, xv, c0[i]);
            c1[i] = _mm512_fmadd_ps(b, xv, c1[i]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(c + i * ldc, c0[i]);
        _mm512_storeu_ps(c + i * ldc + 16, c1[i]);
    }
}

template <int... MR>
void micro_dispatch(std::integer_sequence<int, MR...>, size_t mr, const float* x,
                    const float* panel, size_t kc, float* c, size_t ldc, bool init,
                    const float* bias32) {
    ((mr == size_t(MR + 1) ? micro_kernel<MR + 1>(x, panel, kc, c, ldc, init, bias32) : void()),
     ...);
}

// Columns [k0, k0+kc) of block b into panel columns [8j, 8j+8) (zeros past the last block).
void fill_panel(const PackedView& p, size_t b, size_t j, size_t k0, size_t kc, float* panel) {
    const size_t in = p.in;
    float* dst = panel + 8 * j;
    if (b >= p.n_blocks) {
        for (size_t k = 0; k < kc; ++k) _mm256_store_ps(dst + k * kPanel, _mm256_setzero_ps());
        return;
    }
    switch (p.type) {
        case WeightType::F32: {
            const float* w = static_cast<const float*>(p.data) + (b * in + k0) * kRowBlock;
            for (size_t k = 0; k < kc; ++k)
                _mm256_store_ps(dst + k * kPanel, _mm256_load_ps(w + k * kRowBlock));
            break;
        }
        case WeightType::BF16: {
            const uint16_t* w = static_cast<const uint16_t*>(p.data) + (b * in + k0) * kRowBlock;
            for (size_t k = 0; k < kc; ++k)
                _mm256_store_ps(dst + k * kPanel,
                                _mm256_castsi256_ps(_mm256_slli_epi32(
                                    _mm256_cvtepu16_epi32(load128(w + k * kRowBlock)), 16)));
            break;
        }
        case WeightType::Q4: {
            const size_t groups = in / p.group_size;
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                b * (in / 8) + k0 / 8;
            const __m256i low4 = _mm256_set1_epi32(0xf);
            for (size_t c = 0; c < kc / 8; ++c) {
                const size_t g = (k0 + 8 * c) / p.group_size;
                const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(load128(p.scales + (b * groups + g) * kRowBlock)), 16));
                const __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    reinterpret_cast<const __m128i*>(p.zeros + (b * groups + g) * kRowBlock))));
                const __m256 neg_zs = _mm256_mul_ps(z, _mm256_sub_ps(_mm256_setzero_ps(), s));
                const __m256i v = _mm256_load_si256(q + c);
                unroll8([&]<int T>() {
                    const __m256 qf =
                        _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * T), low4));
                    // (q - z) * s is exact in f32, and so is this single-rounding FMA.
                    _mm256_store_ps(dst + (8 * c + T) * kPanel, _mm256_fmadd_ps(qf, s, neg_zs));
                });
            }
            break;
        }
        case WeightType::Int5: {
            const size_t groups = in / p.group_size;
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                b * (in / 4) + k0 / 4;
            const __m256i low8 = _mm256_set1_epi32(0xff);
            for (size_t c = 0; c < kc / 4; ++c) {
                const size_t g = (k0 + 4 * c) / p.group_size;
                const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(load128(p.scales + (b * groups + g) * kRowBlock)), 16));
                const __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    reinterpret_cast<const __m128i*>(p.zeros + (b * groups + g) * kRowBlock))));
                const __m256 neg_zs = _mm256_mul_ps(z, _mm256_sub_ps(_mm256_setzero_ps(), s));
                const __m256i v = _mm256_load_si256(q + c);
                unroll4([&]<int T>() {
                    const __m256 qf =
                        _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 8 * T), low8));
                    // (q - z) * s is exact in f32, and so is this single-rounding FMA.
                    _mm256_store_ps(dst + (4 * c + T) * kPanel, _mm256_fmadd_ps(qf, s, neg_zs));
                });
            }
            break;
        }
        case WeightType::Nvfp4: {
            const size_t blocks = in / kNvfp4Block;
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                b * (in / 8) + k0 / 8;
            // The signed E2M1 values of codes 0..7 and 8..15 (vpermps reads an index's low 3 bits).
            const __m256 pos = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
            const __m256 sign = _mm256_set1_ps(-0.0f);
            for (size_t c = 0; c < kc / 8; ++c) {
                const size_t k = (k0 + 8 * c) / kNvfp4Block;
                const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(load128(p.scales + (b * blocks + k) * kRowBlock)), 16));
                const __m256i v = _mm256_load_si256(q + c);
                unroll8([&]<int T>() {
                    const __m256i code = _mm256_srli_epi32(v, 4 * T);
                    const __m256 mag = _mm256_permutevar8x32_ps(pos, code);
                    // Bit 3 of the code moved to the sign bit.
                    const __m256 sgn =
                        _mm256_and_ps(_mm256_castsi256_ps(_mm256_slli_epi32(code, 28)), sign);
                    _mm256_store_ps(dst + (8 * c + T) * kPanel,
                                    _mm256_mul_ps(_mm256_xor_ps(mag, sgn), s));
                });
            }
            break;
        }
    }
}

void gemm(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
          ThreadPool& pool) {
    const size_t in = p.in, out = p.out;
    const size_t n_panels = (p.n_blocks + 3) / 4;
    pool.parallel_for(n_panels, [&](size_t p0, size_t p1) {
        alignas(64) float panel[kKc * kPanel];
        alignas(64) float bias32[kPanel];
        alignas(64) float tile[kMr * kPanel];
        // The x chunk packed as [tile][k][kMr] so the micro-kernel reads it sequentially.
        alignas(64) float xpack[(kNc + kMr) * kKc];
        for (size_t r0 = 0; r0 < n; r0 += kNc) {
            const size_t nr = std::min(kNc, n - r0);
            for (size_t k0 = 0; k0 < in; k0 += kKc) {
                const size_t kc = std::min(kKc, in - k0);
                for (size_t i = 0; i < nr; i += kMr) {
                    float* xp = xpack + i * kc;
                    for (size_t r = 0; r < std::min(kMr, nr - i); ++r) {
                        const float* xr = x + (r0 + i + r) * in + k0;
                        for (size_t k = 0; k < kc; ++k) xp[k * kMr + r] = xr[k];
                    }
                }
                for (size_t pp = p0; pp < p1; ++pp) {
                    const size_t o0 = kPanel * pp;
                    const size_t cols = std::min(kPanel, out - o0);
                    for (size_t j = 0; j < 4; ++j) fill_panel(p, 4 * pp + j, j, k0, kc, panel);
                    for (size_t j = 0; j < kPanel; ++j)
                        bias32[j] = bias && j < cols ? bias[o0 + j] : 0.0f;
                    for (size_t i = 0; i < nr; i += kMr) {
                        const size_t mr = std::min(kMr, nr - i);
                        const float* xi = xpack + i * kc;
                        float* yi = y + (r0 + i) * out + o0;
                        const auto seq = std::make_integer_sequence<int, kMr>{};
                        if (cols == kPanel) {
                            micro_dispatch(seq, mr, xi, panel, kc, yi, out, k0 == 0, bias32);
                            continue;
                        }
                        if (k0 != 0)
                            for (size_t r = 0; r < mr; ++r)
                                std::memcpy(tile + r * kPanel, yi + r * out, cols * sizeof(float));
                        micro_dispatch(seq, mr, xi, panel, kc, tile, kPanel, k0 == 0, bias32);
                        for (size_t r = 0; r < mr; ++r)
                            std::memcpy(yi + r * out, tile + r * kPanel, cols * sizeof(float));
                    }
                }
            }
        }
    });
}

// ---- W4A8 GEMV over the block pair (ba, bb): the formula of linear.h, 16 rows per vector ----

template <int NR, int CPB>
void w4a8_gemv_pair(const PackedView& p, const w4a8::Layout& L, size_t ba, size_t bb,
                    const W4A8Scratch& a, size_t r0, float* out) {
    const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data));
    const __m256i* qa = q + ba * (L.in / 8);
    const __m256i* qb = q + bb * (L.in / 8);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const int8_t* xq = a.q + r0 * L.in;
    const float* d = a.d + r0 * L.nblk;
    const float* xs = a.xs + r0 * L.groups;
    __m512 y[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) y[r] = _mm512_setzero_ps();
    for (size_t g = 0; g < L.groups; ++g) {
        const __m512 s = bf16_pair_to_f32(p.scales + (ba * L.groups + g) * kRowBlock,
                                          p.scales + (bb * L.groups + g) * kRowBlock);
        for (size_t bi = 0; bi < L.bpg; ++bi) {
            const size_t blk = g * L.bpg + bi;
            __m512i acc[NR];
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int c = 0; c < CPB; ++c) {
                const size_t chunk = blk * CPB + c;
                const __m512i v = load_pair(qa + chunk, qb + chunk);
                const __m512i lo = _mm512_and_si512(v, m4);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
#pragma GCC unroll 8
                for (int r = 0; r < NR; ++r) {
                    const int8_t* xc = xq + r * L.in + chunk * 8;
                    int32_t xe, xo;
                    std::memcpy(&xe, xc, 4);
                    std::memcpy(&xo, xc + 4, 4);
                    acc[r] =
                        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r], lo, _mm512_set1_epi32(xe)),
                                            hi, _mm512_set1_epi32(xo));
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r)
                y[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]),
                                       _mm512_mul_ps(s, _mm512_set1_ps(d[r * L.nblk + blk])), y[r]);
        }
        const __m512 zs = _mm512_mul_ps(u8_pair_to_f32(p.zeros + (ba * L.groups + g) * kRowBlock,
                                                       p.zeros + (bb * L.groups + g) * kRowBlock),
                                        s);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
            y[r] = _mm512_fnmadd_ps(zs, _mm512_set1_ps(xs[r * L.groups + g]), y[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * 16, y[r]);
}

template <int CPB>
void w4a8_gemv_rows(size_t nr, const PackedView& p, const w4a8::Layout& L, size_t ba, size_t bb,
                    const W4A8Scratch& a, size_t r0, float* out) {
    switch (nr) {
        case 1:
            w4a8_gemv_pair<1, CPB>(p, L, ba, bb, a, r0, out);
            break;
        case 2:
            w4a8_gemv_pair<2, CPB>(p, L, ba, bb, a, r0, out);
            break;
        case 3:
            w4a8_gemv_pair<3, CPB>(p, L, ba, bb, a, r0, out);
            break;
        default:
            w4a8_gemv_pair<4, CPB>(p, L, ba, bb, a, r0, out);
            break;
    }
}

void w4a8_gemv(size_t n, const PackedView& p, const w4a8::Layout& L, const float* bias, float* y,
               const W4A8Scratch& a, ThreadPool& pool) {
    pool.parallel_for(
        p.n_blocks,
        [&](size_t b0, size_t b1) {
            alignas(64) float out[4 * 16];
            for (size_t b = b0; b < b1; b += 2) {
                const size_t bb = b + 1 < b1 ? b + 1 : b;  // odd tail: compute b twice
                for (size_t r0 = 0; r0 < n; r0 += 4) {
                    const size_t nr = std::min<size_t>(4, n - r0);
                    switch (L.kb / 8) {
                        case 1:
                            w4a8_gemv_rows<1>(nr, p, L, b, bb, a, r0, out);
                            break;
                        case 2:
                            w4a8_gemv_rows<2>(nr, p, L, b, bb, a, r0, out);
                            break;
                        default:
                            w4a8_gemv_rows<4>(nr, p, L, b, bb, a, r0, out);
                            break;
                    }
                    for (size_t half = 0; half < (bb != b ? 2u : 1u); ++half) {
                        const size_t blk = b + half;
                        const size_t rows = std::min(kRowBlock, p.out - blk * kRowBlock);
                        for (size_t r = 0; r < nr; ++r) {
                            float* yr = y + (r0 + r) * p.out + blk * kRowBlock;
                            const float* o = out + r * 16 + half * 8;
                            for (size_t j = 0; j < rows; ++j)
                                yr[j] = o[j] + (bias ? bias[blk * kRowBlock + j] : 0.0f);
                        }
                    }
                }
            }
        },
        2);
}

}  // namespace

void linear_avx512(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                   float* scratch, ThreadPool& pool) {
    if (n <= kGemvMaxRows)
        gemv(x, n, p, bias, y, scratch, pool);
    else
        gemm(x, n, p, bias, y, pool);
}

void w4a8_avx512(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                 const W4A8Scratch& s, ThreadPool& pool) {
    const w4a8::Layout L(p);
    w4a8::quantize(x, n, L, s, pool);
    if (n <= kGemvMaxRows)
        w4a8_gemv(n, p, L, bias, y, s, pool);
    else
        w4a8::gemm(n, p, L, bias, y, s, pool);
}

}  // namespace lancet::kernels::detail
