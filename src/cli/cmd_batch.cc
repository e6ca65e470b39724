// `lancet batch`: examples split across launcher ranks (pipeline/batch.h), and --merge.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "pipeline/batch.h"

namespace lancet::cli {

namespace {

struct BatchArgs {
    BatchOptions opt;
    std::string merge;
    int world_size = 0;
    double merge_wait = -1;  // < 0: wait under mpirun only
};

void print_merge(const MergeSummary& m) {
    std::printf("merged %zu parts: %zu items, %zu failed -> %s\n", m.parts, m.items, m.failed,
                m.manifest.c_str());
}

void run(const BatchArgs& a) {
    if (!a.merge.empty()) {
        print_merge(merge_batch(a.merge));
        return;
    }
    if (a.opt.model.empty() || a.opt.examples.empty() || a.opt.out.empty())
        fail("batch: --model, --examples and -o are required (or --merge OUT)");
    const RankInfo rank = launcher_rank(a.world_size);
    log_info("lancet: batch rank ", rank.rank, " of ", rank.world,
             rank.source.empty() ? std::string() : " (from $" + rank.source + ")");
    const BatchSummary s = run_batch(a.opt, rank);
    std::printf(
        "rank %d of %d: %zu items, %zu done, %zu skipped (output exists), %zu failed, "
        "%.2f s -> %s\n",
        rank.rank, rank.world, s.assigned, s.done, s.skipped, s.failed, s.seconds,
        s.manifest_part.c_str());
    std::fflush(stdout);
    if (rank.rank != 0) return;
    // Rank 0 merges once every part is there: at once when alone; under mpirun the ranks run
    // together, so it waits for the others (bounded); otherwise `batch --merge OUT` joins later.
    if (!wait_until([&] { return batch_parts_complete(a.opt.out, rank.world); },
                    merge_wait_seconds(rank, a.merge_wait))) {
        std::printf(
            "waiting for the other ranks' parts: run `lancet batch --merge %s` when "
            "all ranks have finished\n",
            a.opt.out.c_str());
        return;
    }
    print_merge(merge_batch(a.opt.out));
}

}  // namespace

void add_batch(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "batch",
        "Run a task over a list of examples, split across launcher ranks (mpirun, "
        "torchrun, Slurm, indexed jobs)");
    auto a = std::make_shared<BatchArgs>();
    cmd->add_option("-m,--model", a->opt.model, "Model folder (original or AWQ)");
    cmd->add_option("--task", a->opt.task, "Task")
        ->check(CLI::IsMember({"chat"}))
        ->capture_default_str();
    cmd->add_option("--examples", a->opt.examples,
                    "JSON array of prompts or {\"id\", \"prompt\", \"system\", \"max_new_tokens\", "
                    "\"seed\"} objects");
    cmd->add_option("-o,--out", a->opt.out, "Output folder (items/, manifest/, manifest.jsonl)");
    cmd->add_option("--merge", a->merge, "Join OUT's manifest parts into OUT/manifest.jsonl");
    cmd->add_option("--world-size", a->world_size,
                    "Ranks in all (needed with $JOB_COMPLETION_INDEX; checked against others)")
        ->check(CLI::Range(1, 1 << 20));
    cmd->add_option(
        "--merge-wait", a->merge_wait,
        "Seconds rank 0 waits for the other parts (default: 3600 under mpirun, else 0)");
    cmd->add_option("-n,--max-new-tokens", a->opt.max_new_tokens, "Per item, unless it names one")
        ->capture_default_str();
    cmd->add_option("--temperature", a->opt.temperature, "0 = greedy")
        ->check(CLI::Range(0.0f, 100.0f))
        ->capture_default_str();
    cmd->add_option("--top-p", a->opt.top_p, "Nucleus sampling mass")
        ->check(CLI::Range(0.0f, 1.0f))
        ->capture_default_str();
    cmd->add_option("-s,--seed", a->opt.seed, "Sampling seed, unless the item names one")
        ->capture_default_str();
    cmd->add_flag("--special", a->opt.special,
                  "Special-token strings in prompts become special tokens (default: plain text)");
    cmd->callback([a] { run(*a); });
}

}  // namespace lancet::cli
