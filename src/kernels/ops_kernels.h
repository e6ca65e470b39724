// The per-ISA kernels behind ops.h (internal to src/kernels): contiguous-row primitives that the
// op drivers in ops.cc / attention.cc / conv3d.cc call once they have resolved strides, shapes and
// threading. dispatch.cc's op_kernels(Isa) is the only place that picks a table.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dispatch.h"

namespace lancet::kernels::detail {

struct OpKernels {
    // One row of rms_norm: y = x · rsqrt(mean(x²) + eps) · w (w nullable). The sum of squares is
    // taken in double in index order on every ISA (so every path and the former decoder code
    // agree to the bit); the vector paths speed up the scaling.
    void (*rms_norm_row)(const float* x, size_t dim, const float* w, float eps, float* y);
    // One pixel of channel_rms_norm over C contiguous channels.
    void (*channel_rms_norm_row)(const float* x, size_t c, const float* gamma, const float* bias,
                                 float* y);
    // Elementwise over n contiguous floats (y may alias an input). Every path computes exp with
    // libm's expf (silu) and the same erf (gelu) element by element, so an element's result does
    // not depend on where a vector loop's tail falls: bit-identical across thread counts.
    void (*silu_mul)(const float* gate, const float* up, size_t n, float* y);
    void (*silu)(const float* x, size_t n, float* y);
    void (*gelu)(const float* x, size_t n, float* y);
    void (*add)(const float* a, const float* b, size_t n, float* y);
    // x[h*hd ..] for h < heads, rotate-half form, in place, with cos/sin [hd/2]. Computed unfused
    // (a·c − b·s with two roundings) on every path.
    void (*rope_row)(float* x, size_t heads, size_t hd, const float* cos, const float* sin);
    // Attention tiles: s[r*nk+j] = q_r · k_j (q rows hd apart, k rows ldk apart);
    // acc[r*hd+d] += Σ_j p[r*nk+j] v_j[d] (v rows ldv apart); p[i] = exp(p[i] − m) in place,
    // returning the sum (p = −inf gives 0).
    void (*attn_scores)(const float* q, size_t nq, const float* k, size_t ldk, size_t nk, size_t hd,
                        float* s);
    void (*attn_pv)(const float* p, size_t nq, const float* v, size_t ldv, size_t nk, size_t hd,
                    float* acc);
    float (*attn_exp_sum)(float* p, size_t n, float m);
    // Query-block tiles (attention_x86_impl.h; null on paths without them): a block of nr <= ld
    // query rows held transposed, lanes = rows. q[d*ld + r]; s/p st[j*ld + r]; m, sum, corr
    // [ld]; acc[d*ld + r]. Rows past nr up to the vector width are computed too (finite, unused).
    //   scores: st[j*ld + r] = Σ_d q[d*ld + r] · k[j*ldk + d]
    //   softmax: per row, top = max(m, max_j s), corr = exp(m − top), p = exp(s − top) in place,
    //            sum = sum·corr + Σ_j p, m = top (a row with no visible key yet: p = corr = 0)
    //   pv: acc[d*ld + r] = acc[d*ld + r]·corr[r] + Σ_j v[j*ldv + d] · p[j*ld + r]
    void (*attn_scores_cols)(const float* q, size_t ld, size_t nr, const float* k, size_t ldk,
                             size_t nk, size_t hd, float* st);
    void (*attn_softmax_cols)(float* st, size_t ld, size_t nr, size_t nk, float* m, float* sum,
                              float* corr);
    void (*attn_pv_cols)(const float* p, size_t ld, size_t nr, const float* v, size_t ldv,
                         size_t nk, size_t hd, const float* corr, float* acc);
};

// Bf16 attention on AMX tiles (AttnPrecision::Bf16 on Isa::Amx; attention_amx.cc). K and V are
// packed once per call, per kv head, into the tiles' bf16 layouts (zero past the last key and
// past hd), for 16-key blocks of K and 32-key blocks of V:
//   K: kp[kb][c][r][j] (u32) = the pair (k[16 kb + j][32 c + 2r], k[16 kb + j][32 c + 2r + 1]),
//      c < kchunks(hd): the B operand of S = Q·Kᵀ (a 32-bit 16 × 16 transpose of the key block);
//   V: vp[kb][c][r][n] (u32) = the pair (v[32 kb + 2r][16 c + n], v[32 kb + 2r + 1][16 c + n]),
//      c < vchunks(hd): the B operand of O += P·V.
// One task is a block of up to 32 query rows of one head against that head's packed K and V.
struct AttnAmxTask {
    const uint32_t* kp;  // this kv head's packed K
    const uint32_t* vp;  // this kv head's packed V
    size_t hd;
    size_t nr;                  // query rows, 1..32
    const float* const* q;      // [nr] rows of hd floats
    float* const* out;          // [nr] rows of hd floats
    const size_t* qi;           // [nr] chunk position of each row (for the mask)
    const size_t* lo;           // per chunk position: first visible key
    const size_t* dense;        // per chunk position: keys [lo, dense) all visible
    size_t key_begin, key_end;  // the keys any row may see
    float scale;
    // Sets the keys a0 + j (j < nk) that chunk position qi may not see to −inf in s[j].
    void (*mask)(const void* env, float* s, size_t qi, size_t a0, size_t nk);
    const void* env;
    float* scratch;  // attn_amx_scratch_floats(hd) floats, 64-byte aligned
};
struct AttnAmxKernels {
    size_t (*k_words)(size_t keys, size_t hd);  // u32 words of one kv head's packed K
    size_t (*v_words)(size_t keys, size_t hd);
    // Key blocks [b0, b1) of one kv head (k rows ldk apart, `keys` keys): 16-key blocks for K,
    // 32-key blocks for V; the block counts are k_blocks / v_blocks.
    size_t (*k_blocks)(size_t keys);
    size_t (*v_blocks)(size_t keys);
    void (*pack_k)(const float* k, size_t ldk, size_t keys, size_t hd, size_t b0, size_t b1,
                   uint32_t* kp);
    void (*pack_v)(const float* v, size_t ldv, size_t keys, size_t hd, size_t b0, size_t b1,
                   uint32_t* vp);
    size_t (*scratch_floats)(size_t hd);
    void (*begin)();  // loads the tile configuration on the calling thread
    void (*end)();    // releases the tiles
    void (*task)(const AttnAmxTask& t);
};
const AttnAmxKernels& attn_amx_kernels_amx();
// The AMX attention kernels for an ISA: non-null only for Isa::Amx (dispatch.cc).
const AttnAmxKernels* attn_amx_kernels(Isa isa);

const OpKernels& op_kernels_scalar();
const OpKernels& op_kernels_avx2();
const OpKernels& op_kernels_avx512();
// The table for an ISA (dispatch.cc; lancet::Error if this CPU lacks it).
const OpKernels& op_kernels(Isa isa);

}  // namespace lancet::kernels::detail
