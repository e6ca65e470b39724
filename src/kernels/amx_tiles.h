// Intel AMX tile helpers for the *_amx.cc files (compiled with -mamx-tile -mamx-int8 -mamx-bf16;
// reached only through dispatch after cpu_supports(Isa::Amx)). Own inline asm instead of GCC 12's
// _tile_loadconfig / _tile_loadd: the former declares an 8-byte memory operand for the 64-byte
// configuration and the latter no memory operand at all, so the compiler could sink the stores
// that fill a configuration or a tile buffer past the instruction that reads them.
#pragma once

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
