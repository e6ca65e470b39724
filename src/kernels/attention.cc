// attention(): blocked flash-style softmax attention with GQA over a KV cache, one mask
// abstraction (None, Causal, Segments, Splits), online softmax over key tiles.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/numeric.h"
#include "kernels/ops.h"
#include "kernels/ops_kernels.h"

namespace lancet::kernels {
namespace {

constexpr size_t kQueryTile = 32;  // query rows per task: one K/V tile serves them all
constexpr size_t kKeyTile = 64;    // keys per step of the online softmax
// Query blocks of at least this many rows take the column-form tiles where the ISA has them
// (a vector of query rows per register); fewer (decode's one row) stay row by row.
constexpr size_t kMinColumnRows = 8;
// Bf16 calls with at least this many query rows run on AMX tiles where the ISA has them (a tile
// holds 16 rows); fewer (decode) take the vector path with the same roundings.
constexpr size_t kMinAmxRows = 16;

// Lance's split rule for cached key a (< n_cached) or chunk key a − n_cached, query chunk index
// qi.
inline bool split_allows(const AttnMask& m, size_t qi, size_t a) {
    if (a < m.n_cached) return !m.cached_hidden[a];
    const size_t j = a - m.n_cached;
    const int32_t sj = m.split_of[j], si = m.split_of[qi];
    if (sj == si) return m.modes[si] != AttnSplit::Causal || j <= qi;
    return j < qi && m.modes[sj] != AttnSplit::Noise;
}

// n floats of x rounded to bf16 values into y (round_bf16 of core/numeric.h, the same bits for
// every input), written without its branch so the compiler vectorizes the loop: decode's call
// rounds its whole K/V cache, and the scalar form cost more than the attention itself.
void round_bf16_n(const float* x, size_t n, float* y) {
    for (size_t i = 0; i < n; ++i) {
        const uint32_t u = f32_bits(x[i]);
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        const uint32_t quiet = (u | 0x00400000u) & 0xffff0000u;
        y[i] = f32_from_bits((u & 0x7fffffffu) > 0x7f800000u ? quiet : r);
    }
}

void check_attention(const TensorRef& q, const TensorRef& k, const TensorRef& v,
                     const AttnMask& mask, const TensorRef& out) {
    for (const TensorRef* t : {&q, &k, &v, &out})
        if (t->dtype != DType::F32 || !t->data || t->ndim != 3 || t->stride[2] != 1)
            fail("attention: ", t->describe(), " must be a 3-d f32 tensor with unit inner stride");
    const int64_t n = q.shape[0], nh = q.shape[1], hd = q.shape[2], nkv = k.shape[0];
    const int64_t keys = static_cast<int64_t>(mask.n_cached) + n;
    if (k.shape[1] != keys || k.shape[2] != hd || v.shape[0] != nkv || v.shape[1] != keys ||
        v.shape[2] != hd)
        fail("attention: k ", k.describe(), " / v ", v.describe(), " do not hold ", keys,
             " keys of dim ", hd, " for q ", q.describe());
    if (nkv < 1 || nh % nkv != 0)
        fail("attention: ", nh, " query heads do not group over ", nkv, " kv heads");
    if (out.shape[0] != n || out.shape[1] != nh || out.shape[2] != hd)
        fail("attention: out ", out.describe(), " differs from q ", q.describe());
    switch (mask.kind) {
        case AttnMask::Kind::None:
        case AttnMask::Kind::Causal:
            break;
        case AttnMask::Kind::Segments: {
            if (mask.n_cached != 0) fail("attention: a Segments mask takes no cache");
            const int32_t* cu = mask.cu_seqlens;
            if (!cu || mask.n_segments == 0 || cu[0] != 0 || cu[mask.n_segments] != n)
                fail("attention: cu_seqlens must run from 0 to ", n);
            for (size_t s = 0; s < mask.n_segments; ++s)
                if (cu[s + 1] < cu[s]) fail("attention: cu_seqlens decrease at segment ", s);
            break;
        }
        case AttnMask::Kind::Splits:
            if (!mask.split_of || !mask.modes || !mask.split_end ||
                (mask.n_cached && !mask.cached_hidden))
                fail(
                    "attention: a Splits mask needs split_of, modes, split_end and "
                    "cached_hidden");
            break;
    }
}

}  // namespace

void attention(const OpContext& ctx, const TensorRef& q, const int32_t* q_index, const TensorRef& k,
               const TensorRef& v, const AttnMask& mask, float scale, const TensorRef& out,
               AttentionScratch& scratch) {
    check_attention(q, k, v, mask, out);
    const detail::OpKernels& kern = detail::op_kernels(ctx.isa);
    ThreadPool& pool = ctx.threads();
    const size_t n = static_cast<size_t>(q.shape[0]), nh = static_cast<size_t>(q.shape[1]),
                 hd = static_cast<size_t>(q.shape[2]), nkv = static_cast<size_t>(k.shape[0]);
    const bool bf16 = ctx.attn == AttnPrecision::Bf16 ||
                      (ctx.attn == AttnPrecision::Auto && ctx.isa == Isa::Amx && n >= kMinAmxRows);
    if (n == 0) return;
    const size_t group = nh / nkv, P = mask.n_cached;
    if (!(scale > 0.0f)) scale = 1.0f / std::sqrt(static_cast<float>(hd));

    // Per chunk token i the keys it may see lie in [lo, hi); those in [lo, dense) are all
    // visible, so the per-key mask test runs only outside that run (for causal text: the
    // diagonal tile alone; for windows: never).
    auto& lo = scratch.key_begin;
    auto& dense = scratch.dense_end;
    auto& hi = scratch.key_end;
    lo.assign(n, 0);
    dense.resize(n);
    hi.resize(n);
    switch (mask.kind) {
        case AttnMask::Kind::None:
            std::fill(dense.begin(), dense.end(), P + n);
            std::fill(hi.begin(), hi.end(), P + n);
            break;
        case AttnMask::Kind::Causal:
            for (size_t i = 0; i < n; ++i) dense[i] = hi[i] = P + i + 1;
            break;
        case AttnMask::Kind::Segments:
            for (size_t s = 0; s < mask.n_segments; ++s)
                for (int32_t i = mask.cu_seqlens[s]; i < mask.cu_seqlens[s + 1]; ++i) {
                    lo[i] = static_cast<size_t>(mask.cu_seqlens[s]);
                    dense[i] = hi[i] = static_cast<size_t>(mask.cu_seqlens[s + 1]);
                }
            break;
        case AttnMask::Kind::Splits: {
            // Keys are invisible only when hidden in the cache, in a noise split before the
            // token's split, or past its own end.
            size_t cache_dense = P;
            for (size_t a = 0; a < P; ++a)
                if (mask.cached_hidden[a]) {
                    cache_dense = a;
                    break;
                }
            size_t first_noise = n;
            for (size_t i = 0; i < n; ++i)
                if (mask.modes[mask.split_of[i]] == AttnSplit::Noise) {
                    first_noise = i;
                    break;
                }
            for (size_t i = 0, start = 0; i < n; ++i) {
                if (i > 0 && mask.split_of[i] != mask.split_of[i - 1]) start = i;
                const int32_t sp = mask.split_of[i];
                const size_t own_end = mask.modes[sp] == AttnSplit::Causal
                                           ? i + 1
                                           : static_cast<size_t>(mask.split_end[sp]);
                const size_t d = P + (first_noise < start ? first_noise : own_end);
                dense[i] = cache_dense < P ? cache_dense : d;
                const size_t last = mask.modes[sp] == AttnSplit::Causal
                                        ? i
                                        : std::max<size_t>(i, mask.split_end[sp] - 1);
                hi[i] = P + last + 1;
            }
            break;
        }
    }
    const bool splits = mask.kind == AttnMask::Kind::Splits;

    const size_t tiles = (n + kQueryTile - 1) / kQueryTile, tasks = tiles * nh;
    // Row form: q, acc [kQueryTile, hd], s [kQueryTile, kKeyTile], max, sum. Column form (lanes
    // are query rows): qt, acc [hd, kQueryTile], st [kKeyTile, kQueryTile], max, sum, corr.
    const size_t per_share = kQueryTile * (hd * 2 + kKeyTile + 3);
    if (scratch.per_share.size() < pool.size()) scratch.per_share.resize(pool.size());
    for (size_t s = 0; s < pool.size(); ++s)
        if (scratch.per_share[s].size() < per_share) scratch.per_share[s].resize(per_share);
    // K and V as [nkv][keys][hd] rows hd apart. The ViT passes them as strided views of its qkv
    // rows (keys 3·D floats = 15 KB apart at 1280 wide, so every key sits on its own 4 KiB page
    // and a block's pass over a head's keys misses the TLB on each): when many query rows will
    // read them, they are copied once per call to dense rows on huge pages (~1 % of the full
    // blocks' time). The copy is exact, so results do not change.
    const float* kbase = k.f32();
    const float* vbase = v.f32();
    size_t ldk = static_cast<size_t>(k.stride[1]), ldv = static_cast<size_t>(v.stride[1]);
    size_t kgs = static_cast<size_t>(k.stride[0]), vgs = static_cast<size_t>(v.stride[0]);
    const size_t keys = P + n;
    // Bf16 on AMX: K and V packed once into the tiles' bf16 layouts (ops_kernels.h), per kv head,
    // shared by every query block and every head of the group.
    const detail::AttnAmxKernels* amx =
        bf16 && n >= kMinAmxRows ? detail::attn_amx_kernels(ctx.isa) : nullptr;
    const uint32_t* kpk = nullptr;
    const uint32_t* vpk = nullptr;
    size_t kpk_head = 0, vpk_head = 0;
    if (amx) {
        kpk_head = amx->k_words(keys, hd);
        vpk_head = amx->v_words(keys, hd);
        const size_t bytes = nkv * (kpk_head + vpk_head) * sizeof(uint32_t);
        scratch.kv_packed.grow(bytes);
        uint32_t* kp = scratch.kv_packed.as<uint32_t>();
        uint32_t* vp = kp + nkv * kpk_head;
        const size_t kb = amx->k_blocks(keys), vb = amx->v_blocks(keys);
        // Units of 2 K blocks + 1 V block (32 keys each) per kv head.
        pool.parallel_for(nkv * vb, [&](size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) {
                const size_t g = i / vb, blk = i % vb;
                amx->pack_k(kbase + g * kgs, ldk, keys, hd, 2 * blk, std::min(kb, 2 * blk + 2),
                            kp + g * kpk_head);
                amx->pack_v(vbase + g * vgs, ldv, keys, hd, blk, blk + 1, vp + g * vpk_head);
            }
        });
        kpk = kp;
        vpk = vp;
    } else if (bf16 || (kern.attn_scores_cols && n >= kMinColumnRows && (ldk != hd || ldv != hd))) {
        // Dense [nkv][keys][hd] f32 rows for the f32 tiles: K and V rounded to bf16 values
        // (bf16 on the paths without tiles), or copied out of strided rows for the column form.
        const size_t bytes = 2 * nkv * keys * hd * sizeof(float);
        scratch.kv_packed.grow(bytes);
        float* kp = scratch.kv_packed.as<float>();
        float* vp = kp + nkv * keys * hd;
        const float* ks = kbase;
        const float* vs = vbase;
        const size_t kstride = ldk, vstride = ldv, kg = kgs, vg = vgs;
        pool.parallel_for(nkv * keys, [&](size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) {
                const size_t g = i / keys, a = i % keys;
                const float* kr = ks + g * kg + a * kstride;
                const float* vr = vs + g * vg + a * vstride;
                if (bf16) {
                    round_bf16_n(kr, hd, kp + i * hd);
                    round_bf16_n(vr, hd, vp + i * hd);
                } else {
                    std::copy(kr, kr + hd, kp + i * hd);
                    std::copy(vr, vr + hd, vp + i * hd);
                }
            }
        });
        kbase = kp;
        vbase = vp;
        ldk = ldv = hd;
        kgs = vgs = keys * hd;
    }
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();

    // Keys a0 + j (j < nk) that chunk token qi may not see get −inf in row r of a score tile
    // whose rows are `ld` apart and keys `jstride` apart.
    const auto mask_row = [&](float* sr, size_t jstride, size_t qi, size_t a0, size_t nk) {
        for (size_t j = 0; j < nk && a0 + j < lo[qi]; ++j) sr[j * jstride] = kNegInf;
        for (size_t j = dense[qi] > a0 ? dense[qi] - a0 : 0; j < nk; ++j)
            if (!splits || !split_allows(mask, qi, a0 + j)) sr[j * jstride] = kNegInf;
    };

    // The next task's query rows, output rows and first key tile, fetched while this one
    // computes: its rows are hd floats a whole token (nh·hd) apart, a stride the hardware
    // prefetcher does not follow, and a window's keys are new to the cache (measured on the ViT's
    // windows: the query gather was the op's hottest load).
    const auto prefetch_rows = [](const float* p, size_t rows, size_t stride, size_t len,
                                  bool write) {
        for (size_t r = 0; r < rows; ++r)
            for (size_t d = 0; d < len; d += 16) {
                if (write)
                    __builtin_prefetch(p + r * stride + d, 1);
                else
                    __builtin_prefetch(p + r * stride + d);
            }
    };
    const auto prefetch_task = [&](size_t task) {
        const size_t h = task / tiles, r0 = task % tiles * kQueryTile, g = h / group;
        const size_t nr = std::min(kQueryTile, n - r0);
        const size_t qs = static_cast<size_t>(q.stride[0]), os = static_cast<size_t>(out.stride[0]);
        prefetch_rows(q.f32() + r0 * qs + h * q.stride[1], nr, qs, hd, false);
        prefetch_rows(out.f32() + r0 * os + h * out.stride[1], nr, os, hd, true);
        if (amx) return;  // the packed K and V blocks are read in order
        const size_t a0 = lo[q_index ? q_index[r0] : r0], nk = std::min(kKeyTile, P + n - a0);
        prefetch_rows(kbase + g * kgs + a0 * ldk, nk, ldk, hd, false);
        prefetch_rows(vbase + g * vgs + a0 * ldv, nk, ldv, hd, false);
    };

    // F32 folds the scale into q; Bf16 rounds q itself and scales the f32 scores (ops.h).
    const float scale_q = bf16 ? 1.0f : scale;
    const auto q_val = [bf16](float x) { return bf16 ? round_bf16(x) : x; };
    // Bf16: s = scale · (q̃·k̃) for the scores of a tile; p rounded to bf16 for P·V.
    const auto scale_scores = [&](float* sp, size_t count) {
        if (bf16)
            for (size_t i = 0; i < count; ++i) sp[i] *= scale;
    };
    const auto round_p = [&](float* pp, size_t count) {
        if (bf16) round_bf16_n(pp, count, pp);
    };
    // The AMX tasks' view of the mask rule above.
    const auto mask_env = [&](float* sr, size_t qi, size_t a0, size_t nk) {
        mask_row(sr, 1, qi, a0, nk);
    };
    using MaskEnv = decltype(mask_env);
    const auto mask_cb = [](const void* env, float* sr, size_t qi, size_t a0, size_t nk) {
        (*static_cast<const MaskEnv*>(env))(sr, qi, a0, nk);
    };
    if (amx) {
        const size_t floats = amx->scratch_floats(hd) + 16;  // + 16: room to align to 64 bytes
        for (size_t s = 0; s < pool.size(); ++s)
            if (scratch.per_share[s].size() < floats) scratch.per_share[s].resize(floats);
    }
    pool.run([&](size_t share, size_t n_shares) {
        float* base = scratch.per_share[share].data();
        if (amx) amx->begin();
        // Round-robin over tasks: under a causal mask later query tiles cost more, and contiguous
        // ranges would leave the last thread with most of the work. Each output is still
        // computed by one task the same way, whatever the thread count. Head-major: the threads
        // walk one head's query blocks together, so its K and V (1.5 MB for the ViT's 2304
        // tokens × 80) stay in cache across blocks instead of cycling through all heads'.
        for (size_t task = share; task < tasks; task += n_shares) {
            if (task + n_shares < tasks) prefetch_task(task + n_shares);
            const size_t h = task / tiles, tile = task % tiles, g = h / group;
            const size_t r0 = tile * kQueryTile, nr = std::min(kQueryTile, n - r0);
            const float* kh = kbase + g * kgs;
            const float* vh = vbase + g * vgs;
            size_t key_begin = P + n, key_end = 0;  // the keys any row of the tile may see
            for (size_t r = 0; r < nr; ++r) {
                const size_t qi = q_index ? q_index[r0 + r] : r0 + r;
                key_begin = std::min(key_begin, lo[qi]);
                key_end = std::max(key_end, hi[qi]);
            }
            const auto q_row = [&](size_t r) {
                return q.f32() + (r0 + r) * q.stride[0] + h * q.stride[1];
            };
            const auto out_row = [&](size_t r) {
                return out.f32() + (r0 + r) * out.stride[0] + h * out.stride[1];
            };
            const auto row_qi = [&](size_t r) { return q_index ? q_index[r0 + r] : r0 + r; };

            if (amx) {
                const float* qrows[kQueryTile];
                float* orows[kQueryTile];
                size_t qis[kQueryTile];
                for (size_t r = 0; r < nr; ++r) {
                    qrows[r] = q_row(r);
                    orows[r] = out_row(r);
                    qis[r] = row_qi(r);
                }
                detail::AttnAmxTask t;
                t.kp = kpk + g * kpk_head;
                t.vp = vpk + g * vpk_head;
                t.hd = hd;
                t.nr = nr;
                t.q = qrows;
                t.out = orows;
                t.qi = qis;
                t.lo = lo.data();
                t.dense = dense.data();
                t.key_begin = key_begin;
                t.key_end = key_end;
                t.scale = scale;
                t.mask = mask_cb;
                t.env = &mask_env;
                t.scratch = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + 63) &
                                                     ~uintptr_t{63});
                amx->task(t);
                continue;
            }

            if (kern.attn_scores_cols && nr >= kMinColumnRows) {
                // Column form: S = Q·Kᵀ, softmax and O += P·V as register-blocked outer
                // products over the whole query block (attention_x86_impl.h).
                constexpr size_t ld = kQueryTile;
                float* qt = base;
                float* acc = qt + hd * ld;
                float* st = acc + hd * ld;
                float* mx = st + kKeyTile * ld;
                float* sum = mx + ld;
                float* corr = sum + ld;
                // The gather runs across rows for each d, so all the block's rows are fetched at
                // once (row by row, each row's few cache lines were fetched one after another:
                // the op's hottest loads on the ViT's windows). Rows past nr: 0 (finite, unused).
                const float* src[kQueryTile];
                for (size_t r = 0; r < nr; ++r) src[r] = q_row(r);
                for (size_t d = 0; d < hd; ++d) {
                    float* t = qt + d * ld;
                    for (size_t r = 0; r < nr; ++r) t[r] = q_val(src[r][d]) * scale_q;
                    std::fill(t + nr, t + ld, 0.0f);
                }
                std::fill(acc, acc + hd * ld, 0.0f);
                std::fill(mx, mx + ld, kNegInf);
                std::fill(sum, sum + ld, 0.0f);
                for (size_t a0 = key_begin; a0 < key_end; a0 += kKeyTile) {
                    const size_t nk = std::min(kKeyTile, key_end - a0);
                    kern.attn_scores_cols(qt, ld, nr, kh + a0 * ldk, ldk, nk, hd, st);
                    scale_scores(st, nk * ld);
                    for (size_t r = 0; r < nr; ++r) mask_row(st + r, ld, row_qi(r), a0, nk);
                    kern.attn_softmax_cols(st, ld, nr, nk, mx, sum, corr);
                    round_p(st, nk * ld);
                    kern.attn_pv_cols(st, ld, nr, vh + a0 * ldv, ldv, nk, hd, corr, acc);
                }
                float* dst[kQueryTile];
                float inv[kQueryTile];
                for (size_t r = 0; r < nr; ++r) {
                    dst[r] = out_row(r);
                    inv[r] = 1.0f / sum[r];
                }
                for (size_t d = 0; d < hd; ++d)
                    for (size_t r = 0; r < nr; ++r) dst[r][d] = acc[d * ld + r] * inv[r];
                continue;
            }

            // Row form (few rows: decode, a chunk's last partial block; paths without column
            // tiles).
            float* qb = base;
            float* acc = qb + kQueryTile * hd;
            float* s = acc + kQueryTile * hd;
            float* mx = s + kQueryTile * kKeyTile;
            float* sum = mx + kQueryTile;
            for (size_t r = 0; r < nr; ++r) {
                const float* src = q_row(r);
                for (size_t d = 0; d < hd; ++d) qb[r * hd + d] = q_val(src[d]) * scale_q;
                mx[r] = kNegInf;
                sum[r] = 0;
            }
            std::fill(acc, acc + nr * hd, 0.0f);
            for (size_t a0 = key_begin; a0 < key_end; a0 += kKeyTile) {
                const size_t nk = std::min(kKeyTile, key_end - a0);
                kern.attn_scores(qb, nr, kh + a0 * ldk, ldk, nk, hd, s);
                scale_scores(s, nr * nk);
                for (size_t r = 0; r < nr; ++r) {
                    float* sr = s + r * nk;
                    mask_row(sr, 1, row_qi(r), a0, nk);
                    float top = mx[r];
                    for (size_t j = 0; j < nk; ++j) top = std::max(top, sr[j]);
                    if (top == kNegInf) {
                        std::fill(sr, sr + nk, 0.0f);  // nothing visible here yet
                        continue;
                    }
                    const float corr = std::exp(mx[r] - top);  // 0 on the first visible tile
                    mx[r] = top;
                    sum[r] = sum[r] * corr + kern.attn_exp_sum(sr, nk, top);
                    round_p(sr, nk);
                    if (corr != 1.0f)
                        for (size_t d = 0; d < hd; ++d) acc[r * hd + d] *= corr;
                }
                kern.attn_pv(s, nr, vh + a0 * ldv, ldv, nk, hd, acc);
            }
            for (size_t r = 0; r < nr; ++r) {
                float* dst = out_row(r);
                const float inv = 1.0f / sum[r];
                for (size_t d = 0; d < hd; ++d) dst[d] = acc[r * hd + d] * inv;
            }
        }
        if (amx) amx->end();
    });
}

}  // namespace lancet::kernels
