// `lancet batch`: a list of examples split across the ranks of a launcher (mpirun, torchrun,
// Slurm, Kubernetes indexed jobs), one output file per item and a manifest part per rank.
// Split the jobs, never the model: every rank loads the whole model once.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace lancet {

struct RankInfo {
    int rank = 0, world = 1;
    std::string source;  // the variables it came from ("" when run alone)
};

// This process's rank and the world size from the launcher's environment, first match wins:
// Open MPI (OMPI_COMM_WORLD_RANK/SIZE), torchrun and friends (RANK/WORLD_SIZE), Slurm
// (SLURM_PROCID/SLURM_NTASKS), Kubernetes indexed jobs (JOB_COMPLETION_INDEX with `count`, which
// must then be given: the job's completions). Alone: rank 0 of 1. Error on inconsistent values,
// prefixed by `who` (the command).
RankInfo launcher_rank(int count = 0, const char* who = "batch");

// "rank-RRRRR-of-WWWWW<ext>": the file name of rank R's part of a world of W.
std::string rank_part_name(int rank, int world, const std::string& ext);

// How long rank 0 waits for the other ranks' parts before merging: `requested` when >= 0, else an
// hour under mpirun (its ranks run together) and 0 otherwise (other launchers may run the ranks
// at different times; `--merge` joins later).
double merge_wait_seconds(const RankInfo& rank, double requested);
// Polls ready() every 200 ms until it is true (returns true) or `seconds` have passed (false).
bool wait_until(const std::function<bool()>& ready, double seconds);

struct BatchOptions {
    std::string model;
    std::string task = "chat";
    std::string examples;  // JSON array: "prompt" strings or {"id", "prompt", "system", ...}
    std::string out;       // output folder: items/<id>.txt, manifest/rank-R-of-W.jsonl
    int max_new_tokens = 256;
    float temperature = 0.0f;
    float top_p = 1.0f;
    uint64_t seed = 42;
    bool special = false;  // special-token strings in prompts become special tokens
};

struct BatchSummary {
    size_t assigned = 0, done = 0, skipped = 0, failed = 0;
    double seconds = 0;
    std::string manifest_part;
};

// Runs this rank's share (items with index % world == rank). Items whose output exists are
// skipped (resume); a failing item is recorded in the manifest with its error and the rest go on.
BatchSummary run_batch(const BatchOptions& opt, const RankInfo& rank);

struct MergeSummary {
    size_t items = 0, failed = 0, parts = 0;
    std::string manifest;
};

// Joins OUT/manifest/rank-*-of-W.jsonl into OUT/manifest.jsonl (one line per item, by index).
// Error when a part of the world is missing or two parts name the same item.
MergeSummary merge_batch(const std::string& out);

// True when every part of a world of `world` ranks is in OUT/manifest.
bool batch_parts_complete(const std::string& out, int world);

}  // namespace lancet
