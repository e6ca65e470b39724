// Loading a checkpoint's plain tensors and linears into the forms the op layer runs.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/linear.h"
#include "model/lance_checkpoint.h"

namespace lancet {

// A plain tensor as f32, checked to hold `numel` values (one-line error naming it otherwise).
std::vector<float> load_f32(const LanceCheckpoint& ck, const std::string& name, int64_t numel);

// The linear `base` (base + ".weight" [out, in], or its AWQ INT4 qweight/scales/zeros) repacked
// for linear(). F32 weights become BF16 when `to_bf16`. The file pages are released after
// the repack so RSS holds each weight once.
kernels::LinearWeight load_linear(const LanceCheckpoint& ck, const std::string& base, size_t out,
                                  size_t in, bool to_bf16);

}  // namespace lancet
