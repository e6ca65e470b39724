// The activation-statistics file (safetensors): per targeted linear `<base>.mean_abs` F32 [in],
// `<base>.max_abs` F32 [in], `<base>.n_tokens` I64 [1] and `<base>.rows` F32 [r, in], optionally
// `<base>.hessian` F32 [in (in + 1) / 2] (XᵀX over all inputs, packed upper triangle), plus the
// format version, calibrated tasks and reservoir capacity in the metadata. A partial file (one
// rank of a sharded calibration) adds `<base>.sum_abs_q32` I64 [in, 2] and `<base>.row_keys` I64
// [r, 3], the exact state quant::reduce_exact joins, and `lancet.stats.partial` metadata. Reading,
// streaming writing and merging (synthetic statistics: pipeline/stats_synth.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "quant/act_stats.h"

namespace lancet::quant {

inline constexpr int kStatsFormatVersion = 1;

// One linear's entry as declared in the header (shapes only; the values are read on demand).
struct StatsEntry {
    int in = 0;
    int64_t n_rows = 0;    // 0 when the file records no rows for it
    bool exact = false;    // .sum_abs_q32 and .row_keys present (a partial file, see act_stats.h)
    bool hessian = false;  // <base>.hessian present
};

// A mapped statistics file, validated up front for names, dtypes and shapes; values are read and
// checked (finite, non-negative, n_tokens >= 0) per linear by load(), so a multi-gigabyte file is
// never held in memory. Errors name the file and the tensor.
class StatsFile {
  public:
    explicit StatsFile(const std::string& path);

    const std::string& path() const { return file_->path(); }
    const std::vector<std::string>& tasks() const { return tasks_; }
    int capacity() const { return capacity_; }
    // A metadata value, "" when absent.
    std::string metadata(const std::string& key) const;
    // Linear base names ("language_model.model.layers.0.self_attn.q_proj"), sorted.
    const std::map<std::string, StatsEntry>& entries() const { return entries_; }
    bool has(const std::string& base) const { return entries_.count(base) != 0; }
    // The token count alone (8 bytes read). Throws when absent or negative.
    int64_t n_tokens(const std::string& base) const;
    // Reads and validates one linear's statistics. Throws when absent.
    LinearStats load(const std::string& base) const;
    // Drops the mapped pages of `base` (after use), keeping RSS flat over a large file.
    void release(const std::string& base) const;

  private:
    std::unique_ptr<SafetensorsFile> file_;
    std::vector<std::string> tasks_;
    int capacity_ = 0;
    std::map<std::string, StatsEntry> entries_;
};

// Streams a statistics file: declare every linear (width and row count), then write each one in
// declaration order. The output appears atomically at finish() (temporary name + rename).
class StatsFileWriter {
  public:
    StatsFileWriter(const std::string& path, const std::vector<std::string>& tasks, int capacity);
    // exact: also `<base>.sum_abs_q32` and `<base>.row_keys` (a partial file's exact state).
    // hessian: the linear's statistics carry H (written as F32, packed upper triangle).
    void declare(const std::string& base, int in, int64_t n_rows, bool exact = false,
                 bool hessian = false);
    // Extra metadata (before the first write).
    void set_metadata(const std::string& key, const std::string& value);
    // Must follow declaration order; checks the shapes against the declaration.
    void write(const std::string& base, const LinearStats& s);
    void finish();

  private:
    SafetensorsWriter w_;
    std::map<std::string, StatsEntry> declared_;
    bool begun_ = false;
};

// A partial file's identity: which rank of how many wrote it, and a fingerprint of the whole
// run's settings and items (the parts of one run share it). Metadata `lancet.stats.partial`.
struct PartialInfo {
    int rank = 0, world = 1;
    std::string fingerprint;
};

// Writes statistics for the linears of `stats` (sorted by name, the one order every writer of a
// calibration uses) to `path`, atomically. With `partial`, the exact state and the partial
// metadata are written too (every entry must then be exact); without, a plain statistics file.
// The same inputs give the same bytes.
void write_stats_file(const std::string& path, const std::vector<std::string>& tasks, int capacity,
                      const std::map<std::string, LinearStats>& stats,
                      const PartialInfo* partial = nullptr);

// Joins the partial files of one sharded calibration (every rank 0..W-1 once, one fingerprint,
// the same tasks and capacity) into one statistics file with quant::reduce_exact, linear by
// linear: byte for byte what one process over every item writes. Error naming the file otherwise.
void reduce_partial_stats_files(const std::vector<std::string>& parts, const std::string& output);

// Merges several files linear by linear (quant::merge: token-weighted means, max of maxes, a
// uniform reservoir of the union, Hessians summed where every file has one; linears present in
// only some files are carried over), the task
// lists concatenated. capacity <= 0: the largest capacity of the inputs.
void merge_stats_files(const std::vector<std::string>& inputs, const std::string& output,
                       int capacity = 0);

}  // namespace lancet::quant
