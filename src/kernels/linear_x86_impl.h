// 256-bit x86 linear kernels (GEMV + panel GEMM), included only by the per-ISA .cc files.
// Everything is in an anonymous namespace, so each ISA file gets its own copy compiled for its
// own target and no inline function is shared (and picked by the linker) across ISAs.
#pragma once

#include <immintrin.h>

#include <cstring>
#include <utility>

#include "kernels/linear_kernels.h"

namespace lancet::kernels::detail {
namespace {

inline __m256 bf16x8_to_f32(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m256 u8x8_to_f32(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

// Column T of an 8-row x 8-column Q4 tile (one 32-bit word per row) as f32 codes scaled by
// 2^(4T): masking in place costs one op instead of shift+mask, and the scale is exact. Column 7
// would land on the sign bit, so it is shifted down instead (scale 1).
template <int T>
inline __m256 q4_column_scaled(__m256i v) {
    if constexpr (T == 7) {
        return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28));
    } else {
        return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xf << (4 * T))));
    }
}
constexpr float kColumnUnscale[8] = {1.0f,         1.0f / 16,      1.0f / 256,      1.0f / 4096,
                                     1.0f / 65536, 1.0f / 1048576, 1.0f / 16777216, 1.0f};

// Int5: column T of an 8-row x 4-column tile (one code per byte), masked in place, so scaled by
// 2^(8T); column 3 is shifted down instead. Int5 x is pre-multiplied by kInt5Unscale (two chunks).
template <int T>
inline __m256 int5_column_scaled(__m256i v) {
    if constexpr (T == 3) {
        return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 24));
    } else {
        return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xff << (8 * T))));
    }
}
constexpr float kInt5Unscale[8] = {1.0f, 1.0f / 256, 1.0f / 65536, 1.0f,
                                   1.0f, 1.0f / 256, 1.0f / 65536, 1.0f};

// Nvfp4: a byte table from an E2M1 code to u = 2 * value + 12 (0..24), for vpshufb (both lanes).
inline __m256i nvfp4_u_table() {
    return _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,  //
                            12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
}

// The codes of an 8-row x 8-column Nvfp4 tile through the table: byte j of row r's word in `lo`
// is u of column 2j, in `hi` u of column 2j+1.
inline void nvfp4_tile_u(__m256i v, __m256i table, __m256i& lo, __m256i& hi) {
    const __m256i m = _mm256_set1_epi8(0x0f);
    lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m));
    hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m));
}

// Column T of such a tile as u * 2^(8j) (j = T / 2: byte j masked in place; byte 3 shifted down,
// so scale 1). x is pre-multiplied by kNvfp4Unscale: 2^(-8j) and the 1/2 of u / 2.
template <int T>
inline __m256 nvfp4_column_u_scaled(__m256i lo, __m256i hi) {
    const __m256i src = T % 2 == 0 ? lo : hi;
    if constexpr (T / 2 == 3) {
        return _mm256_cvtepi32_ps(_mm256_srli_epi32(src, 24));
    } else {
        return _mm256_cvtepi32_ps(_mm256_and_si256(src, _mm256_set1_epi32(0xff << (8 * (T / 2)))));
    }
}

constexpr float kNvfp4Unscale[8] = {0.5f, 0.5f, 0x1p-9f, 0x1p-9f, 0x1p-17f, 0x1p-17f, 0.5f, 0.5f};

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

// Independent accumulators per x row, so there are >= 6 FMA chains in flight (latency 4 x 2
// pipes) whatever the row count.
constexpr int accumulators(int rows) { return rows == 1 ? 8 : rows == 2 ? 4 : 2; }

template <int NA>
inline __m256 sum_accumulators(const __m256* a) {
    if constexpr (NA == 1) {
        return a[0];
    } else {
        __m256 s[NA / 2];
#pragma GCC unroll 16
        for (int i = 0; i < NA / 2; ++i) s[i] = _mm256_add_ps(a[i], a[i + NA / 2]);
        return sum_accumulators<NA / 2>(s);
    }
}

// ---- GEMV: rows of x at a time against one 8-row block -------------------------------------

// Q4, factored per group: y += s * sum(q * x) - (z * s) * sum(x), with sum(x) per group computed
// once per call. xs holds x pre-multiplied by kColumnUnscale (see q4_column_scaled).
template <int NR>
void gemv_q4_block(const PackedView& p, size_t b, const float* xs, const float* xsum, float* out) {
    constexpr int NA = accumulators(NR);
    const size_t in = p.in, groups = in / p.group_size, cpg = p.group_size / 8;
    const __m256i* q =
        reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) + b * (in / 8);
    const uint16_t* sc = p.scales + b * groups * kRowBlock;
    const uint8_t* zr = p.zeros + b * groups * kRowBlock;
    __m256 tot[NR];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) tot[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m256 acc[NR][NA];
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r)
#pragma GCC unroll 16
            for (int a = 0; a < NA; ++a) acc[r][a] = _mm256_setzero_ps();
        for (size_t c = 0; c < cpg; ++c) {
            const size_t chunk = g * cpg + c;
            const __m256i v = _mm256_load_si256(q + chunk);
            const float* xk = xs + chunk * 8;
            unroll8([&]<int T>() {
                const __m256 qf = q4_column_scaled<T>(v);
#pragma GCC unroll 16
                for (int r = 0; r < NR; ++r)
                    acc[r][T % NA] =
                        _mm256_fmadd_ps(qf, _mm256_broadcast_ss(xk + r * in + T), acc[r][T % NA]);
            });
        }
        const __m256 s = bf16x8_to_f32(sc + g * kRowBlock);
        const __m256 zs = _mm256_mul_ps(u8x8_to_f32(zr + g * kRowBlock), s);
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r) {
            tot[r] = _mm256_fmadd_ps(s, sum_accumulators<NA>(acc[r]), tot[r]);
            tot[r] = _mm256_fnmadd_ps(zs, _mm256_broadcast_ss(xsum + r * groups + g), tot[r]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) _mm256_storeu_ps(out + r * kRowBlock, tot[r]);
}

template <int NR, bool kBf16>
void gemv_dense_block(const PackedView& p, size_t b, const float* x, float* out) {
    constexpr int NA = accumulators(NR);
    const size_t in = p.in;
    const float* wf = static_cast<const float*>(p.data) + b * in * kRowBlock;
    const uint16_t* wh = static_cast<const uint16_t*>(p.data) + b * in * kRowBlock;
    auto load = [&](size_t k) {
        if constexpr (kBf16)
            return bf16x8_to_f32(wh + k * kRowBlock);
        else
            return _mm256_load_ps(wf + k * kRowBlock);
    };
    __m256 acc[NR][NA];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 16
        for (int a = 0; a < NA; ++a) acc[r][a] = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + NA <= in; k += NA)
#pragma GCC unroll 16
        for (int a = 0; a < NA; ++a) {
            const __m256 w = load(k + a);
#pragma GCC unroll 16
            for (int r = 0; r < NR; ++r)
                acc[r][a] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(x + r * in + k + a), acc[r][a]);
        }
    for (; k < in; ++k) {
        const __m256 w = load(k);
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r)
            acc[r][0] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(x + r * in + k), acc[r][0]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r)
        _mm256_storeu_ps(out + r * kRowBlock, sum_accumulators<NA>(acc[r]));
}

// Int5, factored per group as Q4: y += s * sum(q * x) - (z * s) * sum(x). xs holds x
// pre-multiplied by kInt5Unscale (see int5_column_scaled). Two chunks (8 columns) per step; the
// group size is a multiple of 8.
template <int NR>
void gemv_int5_block(const PackedView& p, size_t b, const float* xs, const float* xsum,
                     float* out) {
    constexpr int NA = accumulators(NR);
    const size_t in = p.in, groups = in / p.group_size, cpg = p.group_size / 4;
    const __m256i* q =
        reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) + b * (in / 4);
    const uint16_t* sc = p.scales + b * groups * kRowBlock;
    const uint8_t* zr = p.zeros + b * groups * kRowBlock;
    __m256 tot[NR];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) tot[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < groups; ++g) {
        __m256 acc[NR][NA];
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r)
#pragma GCC unroll 16
            for (int a = 0; a < NA; ++a) acc[r][a] = _mm256_setzero_ps();
        for (size_t c = 0; c < cpg; c += 2) {
            const size_t chunk = g * cpg + c;
            const __m256i v0 = _mm256_load_si256(q + chunk), v1 = _mm256_load_si256(q + chunk + 1);
            const float* xk = xs + chunk * 4;
            unroll4([&]<int T>() {
                const __m256 q0 = int5_column_scaled<T>(v0), q1 = int5_column_scaled<T>(v1);
#pragma GCC unroll 16
                for (int r = 0; r < NR; ++r) {
                    acc[r][T % NA] =
                        _mm256_fmadd_ps(q0, _mm256_broadcast_ss(xk + r * in + T), acc[r][T % NA]);
                    acc[r][(T + 4) % NA] = _mm256_fmadd_ps(
                        q1, _mm256_broadcast_ss(xk + r * in + 4 + T), acc[r][(T + 4) % NA]);
                }
            });
        }
        const __m256 s = bf16x8_to_f32(sc + g * kRowBlock);
        const __m256 zs = _mm256_mul_ps(u8x8_to_f32(zr + g * kRowBlock), s);
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r) {
            tot[r] = _mm256_fmadd_ps(s, sum_accumulators<NA>(acc[r]), tot[r]);
            tot[r] = _mm256_fnmadd_ps(zs, _mm256_broadcast_ss(xsum + r * groups + g), tot[r]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) _mm256_storeu_ps(out + r * kRowBlock, tot[r]);
}

// Nvfp4, factored per 16-column block as Q4 with codes u / 2 and zero-point 6: the table gives
// u = 2 * value + 12 (0..24), so y += s * sum((u / 2) * x) - (6 s) * sum(x). xs holds x times
// kNvfp4Unscale (byte j of the looked-up tile masked in place is u * 2^(8j); byte 3 is shifted
// down), which also folds in the 1/2. At most four accumulators per row of x, so the reduction
// at the end of each short block stays cheap.
template <int NR>
void gemv_nvfp4_block(const PackedView& p, size_t b, const float* xs, const float* xsum,
                      float* out) {
    constexpr int NA = accumulators(NR) < 4 ? accumulators(NR) : 4;
    const size_t in = p.in, blocks = in / kNvfp4Block;
    const __m256i* q =
        reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) + b * (in / 8);
    const uint16_t* sc = p.scales + b * blocks * kRowBlock;
    const __m256i table = nvfp4_u_table();
    const __m256 six = _mm256_set1_ps(6.0f);
    __m256 tot[NR];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) tot[r] = _mm256_setzero_ps();
    for (size_t k = 0; k < blocks; ++k) {
        __m256 acc[NR][NA];
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r)
#pragma GCC unroll 16
            for (int a = 0; a < NA; ++a) acc[r][a] = _mm256_setzero_ps();
#pragma GCC unroll 2
        for (int c = 0; c < 2; ++c) {
            __m256i lo, hi;
            nvfp4_tile_u(_mm256_load_si256(q + 2 * k + c), table, lo, hi);
            const float* xk = xs + k * kNvfp4Block + 8 * c;
            unroll8([&]<int T>() {
                const __m256 u = nvfp4_column_u_scaled<T>(lo, hi);
#pragma GCC unroll 16
                for (int r = 0; r < NR; ++r)
                    acc[r][T % NA] =
                        _mm256_fmadd_ps(u, _mm256_broadcast_ss(xk + r * in + T), acc[r][T % NA]);
            });
        }
        const __m256 s = bf16x8_to_f32(sc + k * kRowBlock);
        const __m256 zs = _mm256_mul_ps(six, s);
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r) {
            tot[r] = _mm256_fmadd_ps(s, sum_accumulators<NA>(acc[r]), tot[r]);
            tot[r] = _mm256_fnmadd_ps(zs, _mm256_broadcast_ss(xsum + r * blocks + k), tot[r]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) _mm256_storeu_ps(out + r * kRowBlock, tot[r]);
}

template <int NR>
void gemv_block(const PackedView& p, size_t b, const float* x, const float* xs, const float* xsum,
                float* out) {
    switch (p.type) {
        case WeightType::F32:
            gemv_dense_block<NR, false>(p, b, x, out);
            break;
        case WeightType::BF16:
            gemv_dense_block<NR, true>(p, b, x, out);
            break;
        case WeightType::Q4:
            gemv_q4_block<NR>(p, b, xs, xsum, out);
            break;
        case WeightType::Int5:
            gemv_int5_block<NR>(p, b, xs, xsum, out);
            break;
        case WeightType::Nvfp4:
            gemv_nvfp4_block<NR>(p, b, xs, xsum, out);
            break;
    }
}

void gemv(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
          float* scratch, ThreadPool& pool) {
    const size_t in = p.in;
    const float* xs = nullptr;
    const float* xsum = nullptr;
    // The kernels that factor a zero-point out per group read x pre-scaled and per-group sums.
    const bool factored =
        p.type == WeightType::Q4 || p.type == WeightType::Int5 || p.type == WeightType::Nvfp4;
    if (factored) {
        const size_t gs = p.group_size, groups = in / gs;
        float* s = scratch;
        float* sums = scratch + n * in;
        const __m256 unscale = _mm256_loadu_ps(p.type == WeightType::Q4     ? kColumnUnscale
                                               : p.type == WeightType::Int5 ? kInt5Unscale
                                                                            : kNvfp4Unscale);
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
    const size_t groups = factored ? in / p.group_size : 0;
    pool.parallel_for(p.n_blocks, [&](size_t b0, size_t b1) {
        alignas(32) float out[4 * kRowBlock];
        for (size_t b = b0; b < b1; ++b) {
            const size_t rows = std::min(kRowBlock, p.out - b * kRowBlock);
            for (size_t r0 = 0; r0 < n; r0 += 4) {
                const size_t nr = std::min<size_t>(4, n - r0);
                const float* xr = x + r0 * in;
                const float* xsr = xs ? xs + r0 * in : nullptr;
                const float* xsumr = xsum ? xsum + r0 * groups : nullptr;
                switch (nr) {
                    case 1:
                        gemv_block<1>(p, b, xr, xsr, xsumr, out);
                        break;
                    case 2:
                        gemv_block<2>(p, b, xr, xsr, xsumr, out);
                        break;
                    case 3:
                        gemv_block<3>(p, b, xr, xsr, xsumr, out);
                        break;
                    default:
                        gemv_block<4>(p, b, xr, xsr, xsumr, out);
                        break;
                }
                for (size_t r = 0; r < nr; ++r) {
                    float* yr = y + (r0 + r) * p.out + b * kRowBlock;
                    for (size_t j = 0; j < rows; ++j)
                        yr[j] = out[r * kRowBlock + j] + (bias ? bias[b * kRowBlock + j] : 0.0f);
                }
            }
        }
    });
}

// ---- GEMM: dequantize a 16-output x kc panel once, then 6x16 register tiles over many rows ----

// c[MR][16] (+)= x[MR][kc] · panel, panel = two [kc][8] halves. init: start from bias16.
// x is packed: x[k * 6 + i] is row i, column k of the tile.
template <int MR>
void micro_kernel(const float* x, const float* pa, const float* pb, size_t kc, float* c, size_t ldc,
                  bool init, const float* bias16) {
    __m256 c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        c0[i] = init ? _mm256_load_ps(bias16) : _mm256_loadu_ps(c + i * ldc);
        c1[i] = init ? _mm256_load_ps(bias16 + 8) : _mm256_loadu_ps(c + i * ldc + 8);
    }
    for (size_t k = 0; k < kc; ++k) {
        const __m256 a = _mm256_load_ps(pa + k * 8);
        const __m256 b = _mm256_load_ps(pb + k * 8);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m256 xv = _mm256_broadcast_ss(x + k * 6 + i);
            c0[i] = _mm256_fmadd_ps(a, xv, c0[i]);
            c1[i] = _mm256_fmadd_ps(b, xv, c1[i]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        _mm256_storeu_ps(c + i * ldc, c0[i]);
        _mm256_storeu_ps(c + i * ldc + 8, c1[i]);
    }
}

void micro_dispatch(size_t mr, const float* x, const float* pa, const float* pb, size_t kc,
                    float* c, size_t ldc, bool init, const float* bias16) {
    switch (mr) {
        case 1:
            micro_kernel<1>(x, pa, pb, kc, c, ldc, init, bias16);
            break;
        case 2:
            micro_kernel<2>(x, pa, pb, kc, c, ldc, init, bias16);
            break;
        case 3:
            micro_kernel<3>(x, pa, pb, kc, c, ldc, init, bias16);
            break;
        case 4:
            micro_kernel<4>(x, pa, pb, kc, c, ldc, init, bias16);
            break;
        case 5:
            micro_kernel<5>(x, pa, pb, kc, c, ldc, init, bias16);
            break;
        default:
            micro_kernel<6>(x, pa, pb, kc, c, ldc, init, bias16);
            break;
    }
}

// Block b, columns [k0, k0+kc), as f32 [kc][8]; returns the panel (the weight itself for F32).
const float* block_panel(const PackedView& p, size_t b, size_t k0, size_t kc, float* dst) {
    const size_t in = p.in;
    switch (p.type) {
        case WeightType::F32:
            return static_cast<const float*>(p.data) + (b * in + k0) * kRowBlock;
        case WeightType::BF16: {
            const uint16_t* w = static_cast<const uint16_t*>(p.data) + (b * in + k0) * kRowBlock;
            for (size_t k = 0; k < kc; ++k)
                _mm256_store_ps(dst + k * 8, bf16x8_to_f32(w + k * kRowBlock));
            return dst;
        }
        case WeightType::Q4: {
            // k0 and kc are multiples of 8 here (in % 8 == 0 for Q4, kKc % 8 == 0).
            const size_t groups = in / p.group_size;
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                b * (in / 8) + k0 / 8;
            const __m256i low4 = _mm256_set1_epi32(0xf);
            for (size_t c = 0; c < kc / 8; ++c) {
                const size_t g = (k0 + 8 * c) / p.group_size;
                const __m256 s = bf16x8_to_f32(p.scales + (b * groups + g) * kRowBlock);
                const __m256 neg_zs =
                    _mm256_mul_ps(u8x8_to_f32(p.zeros + (b * groups + g) * kRowBlock),
                                  _mm256_sub_ps(_mm256_setzero_ps(), s));
                const __m256i v = _mm256_load_si256(q + c);
                unroll8([&]<int T>() {
                    const __m256 qf =
                        _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * T), low4));
                    // (q - z) * s is exact in f32, and so is this single-rounding FMA.
                    _mm256_store_ps(dst + (8 * c + T) * 8, _mm256_fmadd_ps(qf, s, neg_zs));
                });
            }
            return dst;
        }
        case WeightType::Int5: {
            // k0 and kc are multiples of 8 here (in % 8 == 0 for Int5, kKc % 8 == 0).
            const size_t groups = in / p.group_size;
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                b * (in / 4) + k0 / 4;
            const __m256i low8 = _mm256_set1_epi32(0xff);
            for (size_t c = 0; c < kc / 4; ++c) {
                const size_t g = (k0 + 4 * c) / p.group_size;
                const __m256 s = bf16x8_to_f32(p.scales + (b * groups + g) * kRowBlock);
                const __m256 neg_zs =
                    _mm256_mul_ps(u8x8_to_f32(p.zeros + (b * groups + g) * kRowBlock),
                                  _mm256_sub_ps(_mm256_setzero_ps(), s));
                const __m256i v = _mm256_load_si256(q + c);
                unroll4([&]<int T>() {
                    const __m256 qf =
                        _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 8 * T), low8));
                    // (q - z) * s is exact in f32, and so is this single-rounding FMA.
                    _mm256_store_ps(dst + (4 * c + T) * 8, _mm256_fmadd_ps(qf, s, neg_zs));
                });
            }
            return dst;
        }
        case WeightType::Nvfp4: {
            // k0 and kc are multiples of 16 here (in % 16 == 0 for Nvfp4, kKc % 16 == 0).
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                b * (in / 8) + k0 / 8;
            const size_t blocks = in / kNvfp4Block;
            const __m256i table = nvfp4_u_table(), low8 = _mm256_set1_epi32(0xff);
            for (size_t c = 0; c < kc / 8; ++c) {
                const size_t k = (k0 + 8 * c) / kNvfp4Block;
                const __m256 s = bf16x8_to_f32(p.scales + (b * blocks + k) * kRowBlock);
                const __m256 half_s = _mm256_mul_ps(s, _mm256_set1_ps(0.5f));
                const __m256 neg6s = _mm256_mul_ps(s, _mm256_set1_ps(-6.0f));
                __m256i lo, hi;
                nvfp4_tile_u(_mm256_load_si256(q + c), table, lo, hi);
                unroll8([&]<int T>() {
                    const __m256i src = T % 2 == 0 ? lo : hi;
                    const __m256 u = _mm256_cvtepi32_ps(
                        _mm256_and_si256(_mm256_srli_epi32(src, 8 * (T / 2)), low8));
                    // u * s / 2 - 6 s = value * s, exact.
                    _mm256_store_ps(dst + (8 * c + T) * 8, _mm256_fmadd_ps(u, half_s, neg6s));
                });
            }
            return dst;
        }
    }
    return dst;
}

void gemm(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
          ThreadPool& pool) {
    const size_t in = p.in, out = p.out;
    const size_t n_panels = (p.n_blocks + 1) / 2;
    pool.parallel_for(n_panels, [&](size_t p0, size_t p1) {
        alignas(32) float panel_a[kKc * 8];
        alignas(32) float panel_b[kKc * 8];
        alignas(32) float zero_panel[kKc * 8];
        alignas(32) float bias16[16];
        alignas(32) float tile[6 * 16];
        std::memset(zero_panel, 0, sizeof(zero_panel));
        // The x chunk packed as [tile][k][6], so the micro-kernel reads x sequentially rather
        // than from 6 rows 4*in bytes apart (one L1 set, 4K aliasing).
        alignas(32) float xpack[(kNc + 6) * kKc];  // the last tile may be partial
        for (size_t r0 = 0; r0 < n; r0 += kNc) {
            const size_t nr = std::min(kNc, n - r0);
            for (size_t k0 = 0; k0 < in; k0 += kKc) {
                const size_t kc = std::min(kKc, in - k0);
                for (size_t i = 0; i < nr; i += 6) {
                    float* xp = xpack + i * kc;
                    for (size_t r = 0; r < std::min<size_t>(6, nr - i); ++r) {
                        const float* xr = x + (r0 + i + r) * in + k0;
                        for (size_t k = 0; k < kc; ++k) xp[k * 6 + r] = xr[k];
                    }
                }
                for (size_t pp = p0; pp < p1; ++pp) {
                    const size_t b = 2 * pp, o0 = 16 * pp;
                    const size_t cols = std::min<size_t>(16, out - o0);
                    const float* pa = block_panel(p, b, k0, kc, panel_a);
                    const float* pb =
                        b + 1 < p.n_blocks ? block_panel(p, b + 1, k0, kc, panel_b) : zero_panel;
                    for (size_t j = 0; j < 16; ++j) bias16[j] = bias && j < cols ? bias[o0 + j] : 0;
                    for (size_t i = 0; i < nr; i += 6) {
                        const size_t mr = std::min<size_t>(6, nr - i);
                        const float* xi = xpack + i * kc;
                        float* yi = y + (r0 + i) * out + o0;
                        if (cols == 16) {
                            micro_dispatch(mr, xi, pa, pb, kc, yi, out, k0 == 0, bias16);
                            continue;
                        }
                        // Ragged last panel: run on a 16-wide tile and copy the valid columns.
                        if (k0 != 0)
                            for (size_t r = 0; r < mr; ++r)
                                std::memcpy(tile + r * 16, yi + r * out, cols * sizeof(float));
                        micro_dispatch(mr, xi, pa, pb, kc, tile, 16, k0 == 0, bias16);
                        for (size_t r = 0; r < mr; ++r)
                            std::memcpy(yi + r * out, tile + r * 16, cols * sizeof(float));
                    }
                }
            }
        }
    });
}

// Naive-path helper (bench baseline): Q4 -> BF16 repacked layout, rounding (q - z) * s to bf16
// to nearest even as torch does. The products are finite, so no NaN handling is needed.
void dequant_bf16(const PackedView& p, uint16_t* dst, ThreadPool& pool) {
    const size_t in = p.in, chunks = in / 8, groups = in / p.group_size;
    pool.parallel_for(p.n_blocks, [&](size_t b0, size_t b1) {
        const __m256i low4 = _mm256_set1_epi32(0xf), one = _mm256_set1_epi32(1),
                      round = _mm256_set1_epi32(0x7fff);
        for (size_t b = b0; b < b1; ++b) {
            const __m256i* q =
                reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) + b * chunks;
            for (size_t c = 0; c < chunks; ++c) {
                const size_t g = 8 * c / p.group_size;
                const __m256 s = bf16x8_to_f32(p.scales + (b * groups + g) * kRowBlock);
                const __m256 neg_zs =
                    _mm256_mul_ps(u8x8_to_f32(p.zeros + (b * groups + g) * kRowBlock),
                                  _mm256_sub_ps(_mm256_setzero_ps(), s));
                const __m256i v = _mm256_load_si256(q + c);
                unroll8([&]<int T>() {
                    const __m256 w = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * T), low4)), s,
                        neg_zs);
                    const __m256i u = _mm256_castps_si256(w);
                    const __m256i r = _mm256_srli_epi32(
                        _mm256_add_epi32(_mm256_add_epi32(u, round),
                                         _mm256_and_si256(_mm256_srli_epi32(u, 16), one)),
                        16);
                    const __m256i packed =
                        _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
                    _mm_storeu_si128(
                        reinterpret_cast<__m128i*>(dst + (b * in + 8 * c + T) * kRowBlock),
                        _mm256_castsi256_si128(packed));
                });
            }
        }
    });
}

}  // namespace
}  // namespace lancet::kernels::detail
