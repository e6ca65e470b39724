// What the two AMX linear kernels share (linear_amx.cc: W4A8 on TDPBSUD; linear_bf16_amx.cc:
// bf16 on TDPBF16PS), included by those two files only: their warning set and includes,
// the 32-row x 32-output block of C tiles and the masks of a ragged panel.
#pragma once

// GCC 12 takes the undefined-vector temporaries inside the AVX-512 intrinsics for uninitialized
// values; meant for the whole including file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "core/aligned_buffer.h"
#include "kernels/amx_tiles.h"
#include "kernels/linear_kernels.h"

namespace lancet::kernels::detail::amx_linear {

constexpr size_t kCols = 32;  // outputs per panel: 4 row blocks, 2 B tiles
constexpr size_t kRows = 32;  // rows per row tile: 2 A tiles

// The lanes of a panel's first `cols` outputs (cols <= 32) in its two 16-float halves.
struct PanelMasks {
    __mmask16 lo, hi;
};
inline PanelMasks panel_masks(size_t cols) {
    return {static_cast<__mmask16>((1u << std::min<size_t>(cols, 16)) - 1),
            static_cast<__mmask16>((1u << (cols > 16 ? cols - 16 : 0)) - 1)};
}

}  // namespace lancet::kernels::detail::amx_linear
