// AVX-512 linear kernels: GEMV over pairs of 8-row blocks (16 rows per zmm), 12x32 panel GEMM;
// W4A8 with vpdpbusd (512-bit GEMV over block pairs, 512-bit 6x32 GEMM over 4-block panels and
// row blocks of 6 quantized rows).
// GCC 12 reports _mm512_undefined_epi32() inside its own intrinsics as maybe-uninitialized when
// they are inlined (a known false positive of the intrinsics headers); nothing here reads it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cmath>
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

// Software prefetch distance of the n <= kGemvMaxRows kernels, in bytes ahead of each weight
// stream. At n = 1 a core issues a 64-byte line every few cycles, far faster than one stream's
// hardware prefetcher ramps up at each new block; lines requested ~2 KiB ahead keep enough misses
// in flight per core to stream from DRAM (bench kernels --cold). Prefetching past a stream's end
// touches the next block, which is read next anyway.
constexpr size_t kPrefetchBytes = 2048;
inline void prefetch_lines(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (size_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

// One weight array of the repacked layout as the f32/BF16 GEMV walks it: a block's bytes are
// contiguous (block_bytes), and a block pair (ba, bb = ba + 1) is read side by side, `at` bytes
// into each block. prefetch() requests the lines `dist` bytes further on in each; past a block's
// end it goes on at that offset in the next pair (blocks ba + 2, bb + 2), which is what the
// thread reads next in its range, so a pair's first lines are in flight before it starts.
// Nothing at or past `end` (the weight's last block) is requested. Measured on cold n = 1 (one
// and two threads, old and new kernel alternated in one process): BF16 1.00-1.05x; the W4A8 GEMV
// lost 3-10 % with it (its per-group address work; one core streams its pair at the read
// probe's per-core rate either way), so that one keeps prefetching within the pair.
struct PairStream {
    const char* base;
    size_t block_bytes;
    const char* end;
    PairStream(const void* p, size_t block, size_t n_blocks)
        : base(static_cast<const char*>(p)), block_bytes(block), end(base + block * n_blocks) {}
    void prefetch(size_t ba, size_t bb, size_t at, size_t dist, size_t bytes) const {
        size_t o = at + dist;
        if (o >= block_bytes) o += block_bytes;  // the same offset into block ba + 2 (bb + 2)
        const char* a = base + ba * block_bytes + o;
        for (size_t i = 0; i < bytes && a + i < end; i += 64) _mm_prefetch(a + i, _MM_HINT_T0);
        if (bb == ba) return;
        const char* b = a + block_bytes;
        for (size_t i = 0; i < bytes && b + i < end; i += 64) _mm_prefetch(b + i, _MM_HINT_T0);
    }
};

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
        prefetch_lines(reinterpret_cast<const char*>(qa + g * cpg) + kPrefetchBytes, cpg * 32);
        prefetch_lines(reinterpret_cast<const char*>(qb + g * cpg) + kPrefetchBytes, cpg * 32);
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
    constexpr size_t kEs = kBf16 ? 2 : 4;
    const PairStream stream(p.data, in * kRowBlock * kEs, p.n_blocks);
    size_t k = 0;
    for (; k + NA <= in; k += NA) {
        // NA columns of a block are NA * 8 * kEs bytes: one line (bf16, NA = 4 at NR = 2) or
        // more; prefetch every line of this step, kPrefetchBytes ahead (into the next pair
        // near the end of this one).
        stream.prefetch(ba, bb, k * kRowBlock * kEs, kPrefetchBytes, NA * kRowBlock * kEs);
#pragma GCC unroll 8
        for (int a = 0; a < NA; ++a) {
            const __m512 w = load(k + a);
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r)
                acc[r][a] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[r * in + k + a]), acc[r][a]);
        }
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

// The f32-activation GEMV's split (the W4A8 GEMVs use gemv_for below). A thread left alone at
// the end of a job has the memory system to itself but can use only one core's share of it. The
// job is cut into kChunksPerThread * threads pieces of decreasing size (piece i of P weighs
// ceil((P - i) / T): with 2 threads 4 4 3 3 2 2 1 1), claimed in order: the threads take the large
// ones first and finish on pieces of 1/20 of the job instead of 1/8, so both stream until close
// to the end. Boundaries depend only on `units` and the thread count (and never split a unit), so
// results stay bit-identical. fn(u0, u1) gets a range of units.
template <typename F>
void guided_for(ThreadPool& pool, size_t units, F&& fn) {
    const size_t T = pool.size(), P = std::min(units, ThreadPool::kChunksPerThread * T);
    // Jobs of a few units per piece (k/v alone: 16 pairs) are over in tens of microseconds, where
    // the first misses, not the end, cost most; they keep equal ranges.
    if (T == 1 || P <= 1 || units < 8 * P) {
        pool.parallel_for(units, fn);
        return;
    }
    size_t total = 0;
    for (size_t i = 0; i < P; ++i) total += (P - i + T - 1) / T;
    pool.parallel_for(P, [&](size_t i0, size_t i1) {
        for (size_t i = i0; i < i1; ++i) {
            // Pieces before i weigh sum_{j < i} ceil((P - j) / T); units follow in proportion.
            size_t before = 0;
            for (size_t j = 0; j < i; ++j) before += (P - j + T - 1) / T;
            const size_t w = (P - i + T - 1) / T;
            const size_t u0 = units * before / total, u1 = units * (before + w) / total;
            if (u0 < u1) fn(u0, u1);
        }
    });
}

// The W4A8 GEMVs (n <= kGemvMaxRows) stream the weight once from memory in a few hundred
// microseconds or less, so their split decides how close to the read bandwidth they come. Each
// thread walks one contiguous range of units and, when done, takes over the back half of what is
// left of another's (ThreadPool::parallel_ranges): every extra range start is a new stream for the
// hardware prefetcher to ramp up on. Measured cold at n = 1 (W4A8, both threads on a core under
// SCHED_FIFO, medians of 150-400 calls) against the earlier split into kChunksPerThread * T
// pieces of decreasing size: k/v 19.9 -> 17.6 us, q/o 108.4 -> 101.7 us, gate/up 523 -> 510 us,
// and the threads still end within ~1 us of each other. A unit is computed alike whichever thread
// runs it, so results stay bit-identical. fn(u0, u1) gets one unit. The f32-activation GEMV
// keeps guided_for: its BF16 weights ran 2-8 % slower this way (gate/up 1.75-1.79 -> 1.80-1.88
// ms, q/o 334-346 -> 346-352 us, cold, same alternation), its per-byte work being heavier.
template <typename F>
void gemv_for(ThreadPool& pool, size_t units, F&& fn) {
    pool.parallel_ranges(units, [&](size_t u) { fn(u, u + 1); });
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
    guided_for(pool, (p.n_blocks + 1) / 2, [&](size_t u0, size_t u1) {
        alignas(64) float out[4 * 16];
        for (size_t b = 2 * u0; b < 2 * u1; b += 2) {
            const size_t bb = b + 1 < p.n_blocks ? b + 1 : b;  // odd tail: compute b twice
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
                store_block_pair(out, nr, r0, b, bb, p.out, bias, y);
            }
        }
    });
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
    const size_t group_bytes = L.gs / 8 * 32;
    for (size_t g = 0; g < L.groups; ++g) {
        const __m512 s = bf16_pair_to_f32(p.scales + (ba * L.groups + g) * kRowBlock,
                                          p.scales + (bb * L.groups + g) * kRowBlock);
        prefetch_lines(reinterpret_cast<const char*>(qa) + g * group_bytes + kPrefetchBytes,
                       group_bytes);
        prefetch_lines(reinterpret_cast<const char*>(qb) + g * group_bytes + kPrefetchBytes,
                       group_bytes);
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

// Rows 0..n-1 of y for the block pair (b, bb) (bb == b: the weight's odd last block alone).
void w4a8_gemv_pair_rows(size_t n, const PackedView& p, const w4a8::Layout& L, size_t b, size_t bb,
                         const float* bias, float* y, const W4A8Scratch& a) {
    alignas(64) float out[4 * 16];
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
        store_block_pair(out, nr, r0, b, bb, p.out, bias, y);
    }
}

void w4a8_gemv(size_t n, const PackedView& p, const w4a8::Layout& L, const float* bias, float* y,
               const W4A8Scratch& a, ThreadPool& pool) {
    // Units are block pairs (b, b + 1); the odd last block alone.
    gemv_for(pool, (p.n_blocks + 1) / 2, [&](size_t u0, size_t u1) {
        for (size_t u = u0; u < u1; ++u) {
            const size_t b = 2 * u;
            w4a8_gemv_pair_rows(n, p, L, b, b + 1 < p.n_blocks ? b + 1 : b, bias, y, a);
        }
    });
}

// ---- W4A8 GEMM (n > kGemvMaxRows) with 512-bit vpdpbusd: panels of 4 blocks (32 outputs) ----
// Same arithmetic, per output element and in the same order, as w4a8::gemm (linear.h's
// formula): only the vector width and the blocking differ, so results stay bit-identical.

// Panel for blocks b .. b+3, columns [k0, k0 + kc): planes[(c * 2 + j) * 128 + {0, 64}] = the lo,
// hi planes of chunk c of the block pair j (block b+2j in bytes 0..31, b+2j+1 in 32..63);
// s[(g * 2 + j) * 16], zs[...] = f32 scales and zero * scale of the pair's 16 rows, local group g.
// Blocks past the weight's last are zero (their outputs are computed as 0 and not stored).
struct Panel512 {
    uint8_t* planes;
    float* s;
    float* zs;
};

void unpack_panel512(const PackedView& p, const w4a8::Layout& L, size_t b, size_t k0, size_t kc,
                     const Panel512& P) {
    const size_t c0 = k0 / 8, nc = kc / 8, g0 = k0 / L.gs, ng = kc / L.gs;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (size_t j = 0; j < 4; ++j) {
        const size_t pair = j / 2, half = j % 2;
        if (b + j >= p.n_blocks) {
            for (size_t c = 0; c < nc; ++c) {
                uint8_t* dst = P.planes + (c * 2 + pair) * 128 + half * 32;
                _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_setzero_si256());
                _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64), _mm256_setzero_si256());
            }
            for (size_t g = 0; g < ng; ++g) {
                _mm256_store_ps(P.s + (g * 2 + pair) * 16 + half * 8, _mm256_setzero_ps());
                _mm256_store_ps(P.zs + (g * 2 + pair) * 16 + half * 8, _mm256_setzero_ps());
            }
            continue;
        }
        const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                           (b + j) * (L.in / 8) + c0;
        for (size_t c = 0; c < nc; ++c) {
            const __m256i v = _mm256_load_si256(q + c);
            uint8_t* dst = P.planes + (c * 2 + pair) * 128 + half * 32;
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_and_si256(v, m4));
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64),
                               _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        }
        for (size_t g = 0; g < ng; ++g) {
            const size_t at = ((b + j) * L.groups + g0 + g) * kRowBlock;
            const __m256 s = w4a8::bf16x8_to_f32(p.scales + at);
            _mm256_store_ps(P.s + (g * 2 + pair) * 16 + half * 8, s);
            _mm256_store_ps(P.zs + (g * 2 + pair) * 16 + half * 8,
                            _mm256_mul_ps(w4a8::u8x8_to_f32(p.zeros + at), s));
        }
    }
}

// Activations of the GEMM repacked once per pass into row blocks of kMR512 rows, so that a tile
// reads one contiguous stream instead of kMR512 rows `in` bytes apart:
//   q[rb][c][i][8] = x8 of chunk c (8 columns, W4A8Scratch's even/odd order) of row 6 rb + i,
//   d[rb][blk][i], xs[rb][g][i] = its block scales and XS_g.
// Rows past n are zero (their outputs are computed and never stored).
constexpr size_t kMR512 = 6;

struct RowPack {
    int8_t* q;
    float* d;
    float* xs;
};

void pack_row_blocks(const W4A8Scratch& a, const w4a8::Layout& L, size_t n, size_t rb0, size_t rb1,
                     const RowPack& X) {
    const size_t nc = L.in / 8;
    for (size_t rb = rb0; rb < rb1; ++rb) {
        int8_t* q = X.q + rb * kMR512 * L.in;
        float* d = X.d + rb * kMR512 * L.nblk;
        float* xs = X.xs + rb * kMR512 * L.groups;
        for (size_t i = 0; i < kMR512; ++i) {
            const size_t r = rb * kMR512 + i;
            if (r >= n) {
                for (size_t c = 0; c < nc; ++c) std::memset(q + (c * kMR512 + i) * 8, 0, 8);
                for (size_t k = 0; k < L.nblk; ++k) d[k * kMR512 + i] = 0.0f;
                for (size_t g = 0; g < L.groups; ++g) xs[g * kMR512 + i] = 0.0f;
                continue;
            }
            const int8_t* src = a.q + r * L.in;
            for (size_t c = 0; c < nc; ++c) std::memcpy(q + (c * kMR512 + i) * 8, src + c * 8, 8);
            for (size_t k = 0; k < L.nblk; ++k) d[k * kMR512 + i] = a.d[r * L.nblk + k];
            for (size_t g = 0; g < L.groups; ++g) xs[g * kMR512 + i] = a.xs[r * L.groups + g];
        }
    }
}

// c[6][32] (+)= one row block against the panel over ng local groups. xq, d, xs point at the row
// block's chunk, block and group where the panel starts. init: start from zero; bias32 (non-null
// on the last K chunk) is added at the end. 12 i32 and 12 f32 accumulators, 4 plane registers
// and 2 broadcasts: 30 of the 32 zmm, so nothing spills; 24 vpdpbusd per 8 columns.
template <int CPB>
[[gnu::noinline]] void w4a8_tile512(const Panel512& P, size_t ng, size_t bpg, const int8_t* xq,
                                    const float* d, const float* xs, float* c, size_t ldc,
                                    bool init, const float* bias32) {
    constexpr int MR = int(kMR512);
    __m512 y[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j)
            y[i][j] = init ? _mm512_setzero_ps() : _mm512_loadu_ps(c + i * ldc + j * 16);
    const uint8_t* pl = P.planes;
    for (size_t g = 0; g < ng; ++g) {
        const __m512 s0 = _mm512_load_ps(P.s + g * 32), s1 = _mm512_load_ps(P.s + g * 32 + 16);
        for (size_t bi = 0; bi < bpg; ++bi) {
            __m512i acc[MR][2];
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int cc = 0; cc < CPB; ++cc) {
                const __m512i lo0 = _mm512_load_si512(pl), hi0 = _mm512_load_si512(pl + 64),
                              lo1 = _mm512_load_si512(pl + 128), hi1 = _mm512_load_si512(pl + 192);
#pragma GCC unroll 8
                for (int i = 0; i < MR; ++i) {
                    int32_t xe, xo;
                    std::memcpy(&xe, xq + i * 8, 4);
                    std::memcpy(&xo, xq + i * 8 + 4, 4);
                    const __m512i ve = _mm512_set1_epi32(xe), vo = _mm512_set1_epi32(xo);
                    acc[i][0] =
                        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][0], lo0, ve), hi0, vo);
                    acc[i][1] =
                        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][1], lo1, ve), hi1, vo);
                }
                pl += 256;
                xq += MR * 8;
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                const __m512 dv = _mm512_set1_ps(d[i]);
                y[i][0] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(s0, dv), y[i][0]);
                y[i][1] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(s1, dv), y[i][1]);
            }
            d += MR;
        }
        const __m512 z0 = _mm512_load_ps(P.zs + g * 32), z1 = _mm512_load_ps(P.zs + g * 32 + 16);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m512 xv = _mm512_set1_ps(xs[i]);
            y[i][0] = _mm512_fnmadd_ps(z0, xv, y[i][0]);
            y[i][1] = _mm512_fnmadd_ps(z1, xv, y[i][1]);
        }
        xs += MR;
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j) {
            __m512 v = y[i][j];
            if (bias32) v = _mm512_add_ps(v, _mm512_load_ps(bias32 + j * 16));
            _mm512_storeu_ps(c + i * ldc + j * 16, v);
        }
}

// Rows [r0, r1) of x quantized by linear.h's W4A8 formula straight into the row-block layout,
// for kb = 32 (two zmm per block): the same operations, each rounded in f32, as
// w4a8::quantize_rows (d = amax / 127, id = 127 / amax, x8 = rint(x * id) under the default
// MXCSR, XS_g by fma in block order), so the codes and scales are identical to it.
void quantize_packed(const float* x, size_t r0, size_t r1, const w4a8::Layout& L,
                     const RowPack& X) {
    for (size_t r = r0; r < r1; ++r) {
        const float* xr = x + r * L.in;
        const size_t rb = r / kMR512, i = r % kMR512;
        int8_t* q = X.q + rb * kMR512 * L.in + i * 8;
        float* d = X.d + rb * kMR512 * L.nblk + i;
        float* xs = X.xs + rb * kMR512 * L.groups + i;
        for (size_t g = 0; g < L.groups; ++g) {
            float acc = 0.0f;
            for (size_t bi = 0; bi < L.bpg; ++bi) {
                const size_t blk = g * L.bpg + bi, k0 = blk * 32;
                const w4a8::Block32 b = w4a8::quantize_block32(xr + k0);
                int8_t* qc = q + (k0 / 8) * kMR512 * 8;
                _mm_storel_epi64(reinterpret_cast<__m128i*>(qc), b.lo);
                _mm_storel_epi64(reinterpret_cast<__m128i*>(qc + kMR512 * 8),
                                 _mm_unpackhi_epi64(b.lo, b.lo));
                _mm_storel_epi64(reinterpret_cast<__m128i*>(qc + 2 * kMR512 * 8), b.hi);
                _mm_storel_epi64(reinterpret_cast<__m128i*>(qc + 3 * kMR512 * 8),
                                 _mm_unpackhi_epi64(b.hi, b.hi));
                d[blk * kMR512] = b.d;
                acc = std::fma(b.d, float(b.sum), acc);
            }
            xs[g * kMR512] = acc;
        }
    }
}

// The GEMV's activations (n <= kGemvMaxRows rows, W4A8Scratch's plain layout) quantized with
// 512-bit steps where the blocks are 32 columns wide: the operations of quantize_packed, so the
// codes, block scales and XS_g are those of w4a8::quantize_rows (which the other block widths
// keep). A decode call's x is one row: its quantization sits on the critical path of every
// short GEMV (k/v: ~1 us of ~17 on the 256-bit steps, ~0.3 us here).
void quantize_gemv(const float* x, size_t n, const w4a8::Layout& L, const W4A8Scratch& s,
                   ThreadPool& pool) {
    if (L.kb != 32) {
        w4a8::quantize(x, n, L, s, pool);
        return;
    }
    for (size_t r = 0; r < n; ++r) {
        const float* xr = x + r * L.in;
        int8_t* q = s.q + r * L.in;
        float* d = s.d + r * L.nblk;
        for (size_t g = 0; g < L.groups; ++g) {
            float acc = 0.0f;
            for (size_t bi = 0; bi < L.bpg; ++bi) {
                const size_t blk = g * L.bpg + bi, k0 = blk * 32;
                const w4a8::Block32 b = w4a8::quantize_block32(xr + k0);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k0), b.lo);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k0 + 16), b.hi);
                d[blk] = b.d;
                acc = std::fma(b.d, float(b.sum), acc);
            }
            s.xs[r * L.groups + g] = acc;
        }
    }
}

// Zeroes rows [n, n_rb * 6) of the row-block layout.
void zero_pad_rows(const w4a8::Layout& L, size_t n, size_t n_rb, const RowPack& X) {
    for (size_t r = n; r < n_rb * kMR512; ++r) {
        const size_t rb = r / kMR512, i = r % kMR512;
        for (size_t c = 0; c < L.in / 8; ++c)
            std::memset(X.q + rb * kMR512 * L.in + (c * kMR512 + i) * 8, 0, 8);
        for (size_t k = 0; k < L.nblk; ++k) X.d[(rb * L.nblk + k) * kMR512 + i] = 0.0f;
        for (size_t g = 0; g < L.groups; ++g) X.xs[(rb * L.groups + g) * kMR512 + i] = 0.0f;
    }
}

// K chunk: whole groups, about 4096 columns, so that y is loaded and stored once per chunk for
// in <= 4096 (its misses, not the panel's, cost most: measured here). The panel (kc / 8 * 256
// bytes = 128 KiB) and the row blocks of one row chunk (kRb * 6 * kc bytes = 768 KiB) share L2.
constexpr size_t kKc8 = 4096, kRb = 32;

// Rows [0, n) of one pass (pass_rows): x quantized (into `a`, or straight into the row blocks X
// when kb = 32), then the tiles; y [n, out] = x . w^T + bias.
void w4a8_pass512(const float* x, size_t n, const PackedView& p, const w4a8::Layout& L,
                  const float* bias, float* y, const W4A8Scratch& a, const RowPack& X,
                  ThreadPool& pool) {
    const size_t in = p.in, out = p.out;
    const size_t n_rb = (n + kMR512 - 1) / kMR512;
    if (L.kb == 32) {
        if (n * L.in < (size_t{1} << 16))
            quantize_packed(x, 0, n, L, X);
        else
            pool.parallel_for(n, [&](size_t r0, size_t r1) { quantize_packed(x, r0, r1, L, X); });
        zero_pad_rows(L, n, n_rb, X);
    } else {
        w4a8::quantize(x, n, L, a, pool);
        pool.parallel_for(n_rb, [&](size_t b0, size_t b1) { pack_row_blocks(a, L, n, b0, b1, X); });
    }
    const size_t kc_max = L.gs * std::max<size_t>(1, kKc8 / L.gs);
    const size_t n_panels = (p.n_blocks + 3) / 4;
    pool.parallel_for(n_panels, [&](size_t p0, size_t p1) {
        thread_local AlignedBuffer panel_buf;
        const size_t plane_bytes = kc_max / 8 * 256, sfloats = kc_max / L.gs * 32;
        uint8_t* buf = panel_buf.grow(plane_bytes + 2 * sfloats * sizeof(float));
        const Panel512 P{buf, reinterpret_cast<float*>(buf + plane_bytes),
                         reinterpret_cast<float*>(buf + plane_bytes) + sfloats};
        alignas(64) float bias32[32];
        alignas(64) float tile[kMR512 * 32];
        for (size_t rb0 = 0; rb0 < n_rb; rb0 += kRb) {
            const size_t rb1 = std::min(n_rb, rb0 + kRb);
            for (size_t k0 = 0; k0 < in; k0 += kc_max) {
                const size_t kc = std::min(kc_max, in - k0);
                const bool init = k0 == 0, last = k0 + kc == in;
                const size_t c0 = k0 / 8, blk0 = k0 / L.kb, g0 = k0 / L.gs, ng = kc / L.gs;
                for (size_t pp = p0; pp < p1; ++pp) {
                    const size_t o0 = 32 * pp, cols = std::min<size_t>(32, out - o0);
                    unpack_panel512(p, L, 4 * pp, k0, kc, P);
                    for (size_t j = 0; j < 32; ++j) bias32[j] = bias && j < cols ? bias[o0 + j] : 0;
                    for (size_t rb = rb0; rb < rb1; ++rb) {
                        const size_t r = rb * kMR512, rows = std::min(kMR512, n - r);
                        float* yi = y + r * out + o0;
                        const bool direct = rows == kMR512 && cols == 32;
                        float* dst = direct ? yi : tile;
                        const size_t ldc = direct ? out : 32;
                        if (!direct && !init)
                            for (size_t i = 0; i < rows; ++i)
                                std::memcpy(tile + i * 32, yi + i * out, cols * sizeof(float));
                        const int8_t* xq = X.q + rb * kMR512 * in + c0 * kMR512 * 8;
                        const float* d = X.d + (rb * L.nblk + blk0) * kMR512;
                        const float* xs = X.xs + (rb * L.groups + g0) * kMR512;
                        const float* b32 = last ? bias32 : nullptr;
                        switch (L.kb / 8) {
                            case 1:
                                w4a8_tile512<1>(P, ng, L.bpg, xq, d, xs, dst, ldc, init, b32);
                                break;
                            case 2:
                                w4a8_tile512<2>(P, ng, L.bpg, xq, d, xs, dst, ldc, init, b32);
                                break;
                            default:
                                w4a8_tile512<4>(P, ng, L.bpg, xq, d, xs, dst, ldc, init, b32);
                                break;
                        }
                        if (!direct)
                            for (size_t i = 0; i < rows; ++i)
                                std::memcpy(yi + i * out, tile + i * 32, cols * sizeof(float));
                    }
                }
            }
        }
    });
}

// y [n, out] = x . w^T + bias, pass by pass (pass_rows) through one thread_local row-block copy
// of the activations (a: the caller's scratch, used from row 0 for kb != 32).
void w4a8_gemm512(const float* x, size_t n, const PackedView& p, const w4a8::Layout& L,
                  const float* bias, float* y, const W4A8Scratch& a, ThreadPool& pool) {
    const size_t in = p.in;
    // Bytes per row: its x8, block scales and group sums. One pass: 576 rows, 7.2 MiB at in =
    // 11008; 3264 rows at in = 2048.
    const size_t row_bytes = in + (L.nblk + L.groups) * sizeof(float);
    const size_t pass = pass_rows(kRb * kMR512, row_bytes);
    const size_t rows = (std::min(n, pass) + kMR512 - 1) / kMR512 * kMR512;
    thread_local AlignedBuffer pack_buf;
    const size_t q_bytes = rows * in, d_floats = rows * L.nblk;
    uint8_t* pb = pack_buf.grow(rows * row_bytes + 64);
    const RowPack X{reinterpret_cast<int8_t*>(pb), reinterpret_cast<float*>(pb + q_bytes),
                    reinterpret_cast<float*>(pb + q_bytes) + d_floats};
    for (size_t r0 = 0; r0 < n; r0 += pass)
        w4a8_pass512(x + r0 * in, std::min(pass, n - r0), p, L, bias, y + r0 * p.out, a, X, pool);
}

}  // namespace

void linear_avx512(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                   float* scratch, ThreadPool& pool) {
    if (n <= kGemvMaxRows)
        gemv(x, n, p, bias, y, scratch, pool);
    else
        gemm(x, n, p, bias, y, pool);
}

void w4a8_gemv_many_avx512(const float* x, size_t n, const W4A8Out* outs, size_t count,
                           const W4A8Scratch& s, ThreadPool& pool) {
    if (count == 0) return;
    const w4a8::Layout L(outs[0].w);
    quantize_gemv(x, n, L, s, pool);
    // The block pairs of all weights, one after another: pair u of weight k is unit
    // start[k] + u. The same pairs as w4a8_gemv forms per weight, so each y is bit-identical.
    size_t start[kW4A8MaxOuts + 1] = {0};
    for (size_t k = 0; k < count; ++k) start[k + 1] = start[k] + (outs[k].w.n_blocks + 1) / 2;
    gemv_for(pool, start[count], [&](size_t u0, size_t u1) {
        size_t k = 0;
        for (size_t u = u0; u < u1; ++u) {
            while (u >= start[k + 1]) ++k;
            const W4A8Out& o = outs[k];
            const size_t b = 2 * (u - start[k]);
            w4a8_gemv_pair_rows(n, o.w, L, b, b + 1 < o.w.n_blocks ? b + 1 : b, o.bias, o.y, s);
        }
    });
}

void w4a8_avx512(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                 const W4A8Scratch& s, ThreadPool& pool) {
    const w4a8::Layout L(p);
    if (n <= kGemvMaxRows) {
        quantize_gemv(x, n, L, s, pool);
        w4a8_gemv(n, p, L, bias, y, s, pool);
    } else {
        w4a8_gemm512(x, n, p, L, bias, y, s, pool);
    }
}

}  // namespace lancet::kernels::detail
