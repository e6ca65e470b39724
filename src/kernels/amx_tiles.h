// Intel AMX tile helpers for the *_amx.cc files (compiled with -mamx-tile -mamx-int8 -mamx-bf16;
// reached only through dispatch after cpu_supports(Isa::Amx)). Own inline asm instead of GCC 12's
// _tile_loadconfig / _tile_loadd: the former declares an 8-byte memory operand for the 64-byte
// configuration and the latter no memory operand at all, so the compiler could sink the stores
// that fill a configuration or a tile buffer past the instruction that reads them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lancet::kernels::detail::amx {

// The 64-byte LDTILECFG operand, palette 1: per tile register its row count and bytes per row.
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// All eight tiles 16 rows x 64 bytes (the bf16 kernels' and the peak probes' set-up).
inline TileConfig full_tiles() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    return c;
}

inline void load_config(const TileConfig& c) { __asm__ volatile("ldtilecfg %0" ::"m"(c)); }
inline void release() { __asm__ volatile("tilerelease" ::: "memory"); }

}  // namespace lancet::kernels::detail::amx

// Tile register numbers must be literals (they are part of the instruction).
#define LANCET_TILE_LOAD(t, base, stride)                                                   \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(static_cast<const void*>(base)), \
                     "r"(static_cast<long>(stride))                                         \
                     : "memory")
#define LANCET_TILE_STORE(t, base, stride)                                                \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(static_cast<void*>(base)), \
                     "r"(static_cast<long>(stride))                                       \
                     : "memory")
#define LANCET_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
// c += a (signed bytes) . b (unsigned bytes), int32 sums of 4 products per step (TDPBSUD).
#define LANCET_TILE_DPBSUD(c, a, b) \
    __asm__ volatile("tdpbsud %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
// c += a . b over bf16 pairs, f32 sums (TDPBF16PS).
#define LANCET_TILE_DPBF16PS(c, a, b) \
    __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

namespace lancet::kernels::detail::amx {

// C tiles 0-3 as the blocks of RH·16 rows x 32 columns of 4-byte sums at c, rows ld elements
// apart: tile 0 = rows 0-15 x columns 0-15, 1 = 0-15 x 16-31, 2 = 16-31 x 0-15, 3 = 16-31 x
// 16-31 (RH = 1: tiles 0 and 1 only).
template <int RH = 2>
inline void zero_c() {
    LANCET_TILE_ZERO(0);
    LANCET_TILE_ZERO(1);
    if constexpr (RH == 2) {
        LANCET_TILE_ZERO(2);
        LANCET_TILE_ZERO(3);
    }
}
template <int RH = 2, class T>
inline void load_c(const T* c, size_t ld) {
    static_assert(sizeof(T) == 4);
    LANCET_TILE_LOAD(0, c, ld * 4);
    LANCET_TILE_LOAD(1, c + 16, ld * 4);
    if constexpr (RH == 2) {
        LANCET_TILE_LOAD(2, c + 16 * ld, ld * 4);
        LANCET_TILE_LOAD(3, c + 16 * ld + 16, ld * 4);
    }
}
template <int RH = 2, class T>
inline void store_c(T* c, size_t ld) {
    static_assert(sizeof(T) == 4);
    LANCET_TILE_STORE(0, c, ld * 4);
    LANCET_TILE_STORE(1, c + 16, ld * 4);
    if constexpr (RH == 2) {
        LANCET_TILE_STORE(2, c + 16 * ld, ld * 4);
        LANCET_TILE_STORE(3, c + 16 * ld + 16, ld * 4);
    }
}

// The block step: C tiles 0-3 += A tiles 4, 5 x B tiles 6, 7 (C 0 = A 4 x B 6, 1 = 4 x 7, 2 = 5 x
// 6, 3 = 5 x 7; RH = 1: C 0 and 1 from A 4 only), by TDPBSUD or TDPBF16PS.
template <int RH = 2>
inline void dpbsud_c() {
    LANCET_TILE_DPBSUD(0, 4, 6);
    LANCET_TILE_DPBSUD(1, 4, 7);
    if constexpr (RH == 2) {
        LANCET_TILE_DPBSUD(2, 5, 6);
        LANCET_TILE_DPBSUD(3, 5, 7);
    }
}
template <int RH = 2>
inline void dpbf16ps_c() {
    LANCET_TILE_DPBF16PS(0, 4, 6);
    LANCET_TILE_DPBF16PS(1, 4, 7);
    if constexpr (RH == 2) {
        LANCET_TILE_DPBF16PS(2, 5, 6);
        LANCET_TILE_DPBF16PS(3, 5, 7);
    }
}

}  // namespace lancet::kernels::detail::amx
