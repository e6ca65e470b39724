// Per-linear activation statistics for AWQ: mean and max |x| per input channel, the token count,
// and a deterministic, mergeable sample of input rows; accumulation and merging.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace lancet::quant {

// Statistics of the input of one linear layer. Maps one-to-one onto the tensors
// `<linear>.mean_abs` F32 [in], `<linear>.max_abs` F32 [in], `<linear>.n_tokens` I64 [1] and
// `<linear>.rows` F32 [n_rows, in] of a stats file, and optionally `<linear>.hessian` F32
// [in (in + 1) / 2].
struct LinearStats {
    int in = 0;
    std::vector<float> mean_abs;  // [in]
    std::vector<float> max_abs;   // [in]
    int64_t n_tokens = 0;
    std::vector<float> rows;  // [n_rows, in]: a uniform sample (without replacement) of the inputs
    // H = XᵀX over ALL n_tokens inputs (not the sample), symmetric, so only its upper triangle is
    // kept, packed row by row: row i holds H[i][i..in-1] and starts at packed_index(in, i, i).
    // Empty when not recorded (StatsAccumulator's `hessian` off).
    std::vector<double> hessian;
    int64_t n_rows() const { return in > 0 ? static_cast<int64_t>(rows.size()) / in : 0; }
    bool has_hessian() const { return !hessian.empty(); }

    // The exact state a sharded calibration reduces (both empty otherwise; `<linear>.sum_abs_q32`
    // I64 [in, 2] and `<linear>.row_keys` I64 [n_rows, 3] in a partial statistics file):
    // sum_abs_q32: per channel the sum of round(|x| 2^32) as a 128-bit integer (low, high words),
    // exact, so partial sums add up to the same bits in any grouping and order;
    // row_keys: per kept row its priority (the reservoir keeps the smallest) and key (item,
    // ordinal), rows in key order.
    std::vector<int64_t> sum_abs_q32;
    std::vector<int64_t> row_keys;
    bool exact() const { return !sum_abs_q32.empty(); }
};

// Position of H[i][j] (i <= j) in the packed upper triangle of an [in, in] symmetric matrix.
inline int64_t packed_index(int in, int i, int j) {
    return static_cast<int64_t>(i) * in - static_cast<int64_t>(i) * (i - 1) / 2 + (j - i);
}
inline int64_t packed_size(int in) { return static_cast<int64_t>(in) * (in + 1) / 2; }
// The full [in, in] row-major matrix of a packed upper triangle, in f32 (what GPTQ takes).
std::vector<float> unpack_symmetric(const std::vector<double>& packed, int in);

// Accumulates LinearStats over calls. Every row has a key: the calibration item it belongs to
// (begin_item) and its ordinal among that item's rows here; the reservoir keeps the `capacity`
// rows of smallest priority hash(seed, key) (a uniform sample without replacement, "bottom-k"),
// listed in key order. The per-channel |x| sums are exact fixed-point integers. So the result
// depends only on the set of (key, row) pairs, not on the order items are added in: statistics
// of disjoint item sets reduce (reduce_exact) to exactly what one accumulator over all of them
// gives, byte for byte.
//
// With `hessian`, also H = XᵀX over every row added, accumulated in double: rows are buffered
// and every kHessianBatch rows the upper triangle gets the batch's Gram matrix, computed in f32
// by the GEMM (each entry a dot product of at most kHessianBatch terms) and added in double.
// H is NOT exact: its bits depend on the order rows are added, so it does not reduce across
// shards (reduce_exact refuses more than one part holding one).
class StatsAccumulator {
  public:
    static constexpr int kHessianBatch = 256;
    StatsAccumulator(int in, int capacity = 512, uint64_t seed = 0x5eed, bool hessian = false);
    // Rows added from now on belong to item `item` (ordinals from 0). Begin each item once. Without
    // a call every row is item 0's, numbered in the order added.
    void begin_item(int64_t item);
    // Adds n rows of width `in` (row-major). Throws lancet::Error on a width mismatch or a
    // non-finite value (a NaN would silently poison every statistic).
    void add_rows(const float* x, int64_t n, int in);
    // The statistics; with `exact`, sum_abs_q32 and row_keys are filled too. (Folds the buffered
    // rows into H first; logically const.)
    LinearStats stats(bool exact = false) const;
    bool hessian() const { return hessian_on_; }
    int64_t n_tokens() const { return n_tokens_; }
    int in() const { return in_; }
    // Rows the reservoir holds now: min(n_tokens, capacity).
    int64_t n_rows() const { return std::min<int64_t>(n_tokens_, capacity_); }

  private:
    struct Kept {
        uint64_t priority;
        int64_t item, ordinal;
        int64_t slot;  // row index in rows_
    };
    void flush_hessian() const;
    int in_, capacity_;
    uint64_t seed_;
    bool hessian_on_;
    mutable std::vector<double> hessian_;  // packed upper triangle
    mutable std::vector<float> pending_;   // rows not yet in hessian_ [< kHessianBatch, in]
    int64_t item_ = 0, ordinal_ = 0;
    std::vector<unsigned __int128> sum_q32_;
    std::vector<float> max_abs_;
    int64_t n_tokens_ = 0;
    std::vector<Kept> heap_;  // max-heap by (priority, item, ordinal): the worst kept row on top
    std::vector<float> rows_;
};

// The reservoir priority of row `ordinal` of item `item` under `seed` (splitmix64 mixing).
uint64_t row_priority(uint64_t seed, int64_t item, int64_t ordinal);

// Reduces exact statistics of disjoint item sets (StatsAccumulator::stats(true) or a partial
// statistics file) into the statistics of their union: summed integers, max of maxes, the
// `capacity` rows of smallest (priority, key) in key order. Independent of the order of `parts`;
// equal, byte for byte, to one accumulator over every item. The result is exact too.
LinearStats reduce_exact(const std::vector<const LinearStats*>& parts, int capacity);

// Combines statistics of disjoint token sets: means weighted by token counts, max of maxes, and a
// reservoir that is again a uniform sample of the union (each output row comes from a with
// probability n_a / (n_a + n_b), drawn without replacement). Deterministic given `seed`.
// The result holds min(capacity, n_a + n_b) rows, fewer only where an input's reservoir was
// already truncated below that (a sample cannot grow back). Hessians add (the token sets are
// disjoint); the result has one only when both inputs do. Throws on width mismatch.
LinearStats merge(const LinearStats& a, const LinearStats& b, int capacity = 512,
                  uint64_t seed = 0x3e46e);

}  // namespace lancet::quant
