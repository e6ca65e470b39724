// AMX versions of the bench's int8 and bf16 peak probes: TDPBSUD / TDPBF16PS on full tiles (16
// rows x 64 bytes of A, 16 rows x 64 bytes of B in the VNNI layout, 16 x 16 int32 or f32 C), four
// independent C tiles fed by two A and two B tiles, so consecutive instructions never wait on
// each other's result.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/amx_tiles.h"

namespace lancet::kernels::detail {
namespace {

// The probes' loop: a (16 rows x 64 bytes) in the A tiles 4, 5 and the B tiles 6, 7, the C tiles
// 0-3 zeroed, `dots` (one iteration's four tile dots, C 0-3 from A 4, 5 x B 6, 7) run `iters`
// times, C tile 0 stored to c (16 x 16 4-byte sums).
template <class Dots>
void run_tiles(const void* a, void* c, size_t iters, const Dots& dots) {
    amx::load_config(amx::full_tiles());
    LANCET_TILE_LOAD(4, a, 64);
    LANCET_TILE_LOAD(5, a, 64);
    LANCET_TILE_LOAD(6, a, 64);
    LANCET_TILE_LOAD(7, a, 64);
    amx::zero_c();
    for (size_t i = 0; i < iters; ++i) dots();
    LANCET_TILE_STORE(0, c, 64);
    amx::release();
}

}  // namespace

double probe_int8_amx(size_t iters, int seed) {
    alignas(64) int8_t a[16 * 64];
    alignas(64) int32_t c[16 * 16];
    std::memset(a, static_cast<int8_t>(seed), sizeof a);
    run_tiles(a, c, iters, [] { amx::dpbsud_c(); });
    // 16 x 16 outputs x 64 byte pairs x (multiply + add) per instruction, 4 per iteration; the
    // result is folded in with zero weight so the loop is not dead code.
    return double(iters) * 4 * 16 * 16 * 64 * 2 + 0.0 * double(c[0]);
}

double probe_bf16_amx(size_t iters, float seed) {
    // Small normal bf16 values (0x3c00 + seed bits ~ 2^-7): the sums stay finite and normal.
    alignas(64) uint16_t a[16 * 32];
    alignas(64) float c[16 * 16];
    for (auto& v : a) v = static_cast<uint16_t>(0x3c00 + (static_cast<int>(seed) & 0x7f));
    run_tiles(a, c, iters, [] { amx::dpbf16ps_c(); });
    // 16 x 16 outputs x 32 bf16 pairs x (multiply + add) per instruction, 4 per iteration.
    return double(iters) * 4 * 16 * 16 * 32 * 2 + 0.0 * double(c[0]);
}

}  // namespace lancet::kernels::detail
