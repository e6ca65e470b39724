// AttnPrecision::Auto is, call by call, exactly one of the two precisions: Bf16 where the call
// runs on the AMX tiles (Isa::Amx, >= 16 query rows), F32 otherwise. Checked bit for bit against
// explicit F32 and Bf16 calls on every ISA the CPU has, for a decode-sized and a block-sized call.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"

namespace lancet::kernels {
namespace {

std::vector<float> attend(Isa isa, AttnPrecision prec, size_t n, size_t cached,
                          const std::vector<float>& q, const std::vector<float>& k,
                          const std::vector<float>& v) {
    constexpr int64_t nh = 4, nkv = 2, hd = 64;
    const int64_t keys = static_cast<int64_t>(cached + n), rows = static_cast<int64_t>(n);
    std::vector<float> out(n * nh * hd);
    OpContext ctx;
    ctx.isa = isa;
    ctx.attn = prec;
    AttnMask mask;
    mask.kind = AttnMask::Kind::Causal;
    mask.n_cached = cached;
    AttentionScratch scratch;
    attention(ctx, TensorRef::contiguous(q.data(), {rows, nh, hd}), nullptr,
              TensorRef::contiguous(k.data(), {nkv, keys, hd}),
              TensorRef::contiguous(v.data(), {nkv, keys, hd}), mask, 0.0f,
              TensorRef::contiguous(out.data(), {rows, nh, hd}), scratch);
    return out;
}

TEST(AttentionAuto, IsBf16OnAmxTilesAndF32Elsewhere) {
    Rng rng(7);
    for (const Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx}) {
        if (!cpu_supports(isa)) continue;
        for (const size_t n : {size_t{1}, size_t{5}, size_t{16}, size_t{40}}) {
            const size_t cached = 23, keys = cached + n;
            std::vector<float> q(n * 4 * 64), k(2 * keys * 64), v(2 * keys * 64);
            for (auto* t : {&q, &k, &v})
                for (float& x : *t) x = static_cast<float>(rng.normal());
            const auto a = attend(isa, AttnPrecision::Auto, n, cached, q, k, v);
            const bool tiles = isa == Isa::Amx && n >= 16;
            const auto want =
                attend(isa, tiles ? AttnPrecision::Bf16 : AttnPrecision::F32, n, cached, q, k, v);
            const auto other =
                attend(isa, tiles ? AttnPrecision::F32 : AttnPrecision::Bf16, n, cached, q, k, v);
            EXPECT_EQ(std::memcmp(a.data(), want.data(), a.size() * sizeof(float)), 0)
                << isa_name(isa) << " n " << n;
            // The two precisions differ on these inputs, so the check above can tell them apart.
            EXPECT_NE(std::memcmp(want.data(), other.data(), a.size() * sizeof(float)), 0)
                << isa_name(isa) << " n " << n;
        }
    }
}

}  // namespace
}  // namespace lancet::kernels
