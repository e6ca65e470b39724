// Implementation of `lancet batch`.
#include "pipeline/batch.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/text_generation.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A non-negative integer environment variable, or -1 when unset.
int64_t env_int(const char* name, const char* who) {
    const char* v = std::getenv(name);
    if (!v || !*v) return -1;
    char* end = nullptr;
    const long long x = std::strtoll(v, &end, 10);
    if (*end != '\0' || x < 0 || x > (1 << 30))
        fail(who, ": $", name, " is not a rank: \"", v, "\"");
    return x;
}

std::string part_name(int rank, int world) { return rank_part_name(rank, world, ".jsonl"); }

struct Item {
    size_t index;
    std::string id;  // file-name safe
    json spec;
};

std::vector<Item> read_items(const std::string& path) {
    const json j = read_json_value(path);
    if (!j.is_array()) fail(path, ": the examples must be a JSON array");
    std::vector<Item> items;
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < j.size(); ++i) {
        Item it{i, {}, j[i]};
        if (j[i].is_object() && j[i].contains("id")) {
            const json& id = j[i]["id"];
            it.id = id.is_string() ? id.get<std::string>() : id.dump();
            const bool safe = !it.id.empty() && it.id.size() <= 128 && it.id[0] != '.' &&
                              std::all_of(it.id.begin(), it.id.end(), [](char c) {
                                  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                                         c == '_' || c == '.';
                              });
            if (!safe)
                fail(path, ": item ", i, ": id \"", it.id,
                     "\" must be 1-128 characters of A-Z a-z 0-9 . _ - (it names the output file)");
        } else {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%06zu", i);
            it.id = buf;
        }
        if (!seen.emplace(it.id, i).second)
            fail(path, ": items ", seen[it.id], " and ", i, " share the id \"", it.id, "\"");
        items.push_back(std::move(it));
    }
    return items;
}

}  // namespace

std::string rank_part_name(int rank, int world, const std::string& ext) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "rank-%05d-of-%05d", rank, world);
    return buf + ext;
}

double merge_wait_seconds(const RankInfo& rank, double requested) {
    if (requested >= 0) return requested;
    return rank.source.rfind("OMPI_", 0) == 0 ? 3600.0 : 0.0;
}

bool wait_until(const std::function<bool()>& ready, double seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!ready()) {
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= seconds)
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return true;
}

RankInfo launcher_rank(int count, const char* who) {
    struct Pair {
        const char *rank, *size;
    };
    const Pair pairs[] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                          {"RANK", "WORLD_SIZE"},
                          {"SLURM_PROCID", "SLURM_NTASKS"}};
    RankInfo r;
    for (const Pair& p : pairs) {
        const int64_t rank = env_int(p.rank, who), size = env_int(p.size, who);
        if (rank < 0 && size < 0) continue;
        if (rank < 0 || size < 1) fail(who, ": $", p.rank, " and $", p.size, " must both be set");
        r.rank = static_cast<int>(rank);
        r.world = static_cast<int>(size);
        r.source = std::string(p.rank) + "/" + p.size;
        break;
    }
    if (r.source.empty()) {
        const int64_t index = env_int("JOB_COMPLETION_INDEX", who);
        if (index >= 0) {
            if (count < 1)
                fail(who,
                     ": $JOB_COMPLETION_INDEX is set: give the job's completions as "
                     "--world-size");
            r.rank = static_cast<int>(index);
            r.world = count;
            r.source = "JOB_COMPLETION_INDEX/--world-size";
        } else if (count > 0) {
            r.world = count;  // a world size alone: rank 0 of it
        }
    } else if (count > 0 && count != r.world) {
        fail(who, ": --world-size ", count, " disagrees with $", r.source, " (", r.world, ")");
    }
    if (r.rank >= r.world) fail(who, ": rank ", r.rank, " is outside a world of ", r.world);
    return r;
}

BatchSummary run_batch(const BatchOptions& opt, const RankInfo& rank) {
    if (opt.task != "chat") fail("batch: task \"", opt.task, "\" is not supported (chat)");
    if (opt.max_new_tokens < 1) fail("batch: --max-new-tokens must be at least 1");
    const std::vector<Item> items = read_items(opt.examples);
    const auto t0 = std::chrono::steady_clock::now();
    BatchSummary sum;
    const fs::path out(opt.out);
    fs::create_directories(out / "items");
    fs::create_directories(out / "manifest");

    // The model loads only when this rank has an item to compute.
    std::vector<const Item*> mine;
    for (const Item& it : items)
        if (static_cast<int>(it.index % static_cast<size_t>(rank.world)) == rank.rank)
            mine.push_back(&it);
    sum.assigned = mine.size();
    std::unique_ptr<LanceCheckpoint> ck;
    std::unique_ptr<Qwen2Tokenizer> tok;
    std::unique_ptr<LanceWeights> weights;
    std::unique_ptr<DecoderSession> session;
    auto load = [&] {
        if (session) return;
        ck = LanceCheckpoint::open(opt.model);
        tok = std::make_unique<Qwen2Tokenizer>(Qwen2Tokenizer::load(opt.model));
        DecoderOptions d;
        d.load_gen = false;
        d.bf16_weights = true;
        d.logits_limit = static_cast<int64_t>(tok->size());
        weights = std::make_unique<LanceWeights>(*ck, d);
        session = std::make_unique<DecoderSession>(*weights);
    };

    std::string manifest;
    for (const Item* it : mine) {
        const std::string rel = "items/" + it->id + ".txt";
        const fs::path path = out / rel;
        json line = {{"item", it->index}, {"id", it->id}, {"rank", rank.rank}};
        const auto s0 = std::chrono::steady_clock::now();
        if (fs::exists(path)) {
            ++sum.skipped;
            line["seconds"] = 0.0;
            line["output"] = rel;
            line["error"] = nullptr;
            line["skipped"] = true;
            manifest += line.dump() + "\n";
            continue;
        }
        try {
            const json& s = it->spec;
            std::string prompt, system = kDefaultSystemPrompt;
            GenerateOptions g;
            g.max_new_tokens = opt.max_new_tokens;
            g.sampler.temperature = opt.temperature;
            g.sampler.top_p = opt.top_p;
            g.sampler.seed = opt.seed;
            if (s.is_string()) {
                prompt = s.get<std::string>();
            } else if (s.is_object()) {
                if (!s.contains("prompt") || !s["prompt"].is_string())
                    fail("item has no string \"prompt\"");
                prompt = s["prompt"].get<std::string>();
                if (s.contains("system")) {
                    if (!s["system"].is_string()) fail("\"system\" must be a string");
                    system = s["system"].get<std::string>();
                }
                const std::string where = "item " + std::to_string(it->index);
                const int64_t def_max = g.max_new_tokens;
                g.max_new_tokens = static_cast<int>(
                    json_get_int(s, "max_new_tokens", 1, 1 << 20, where, &def_max));
                const int64_t def_seed = static_cast<int64_t>(opt.seed);
                g.sampler.seed =
                    static_cast<uint64_t>(json_get_int(s, "seed", 0, INT64_MAX, where, &def_seed));
            } else {
                fail("an item must be a prompt string or an object");
            }
            if (prompt.empty()) fail("empty prompt");
            load();
            const std::vector<int32_t> ids32 =
                chat_ids(*tok, system, {{"user", prompt}}, opt.special);
            g.stop_ids = {tok->special_id("<|im_end|>")};
            const GenerateResult r = generate_text(
                *session, ck->config(), std::vector<int64_t>(ids32.begin(), ids32.end()), g);
            write_file_atomic(path.string(), tok->decode(r.tokens) + "\n");
            line["output"] = rel;
            line["error"] = nullptr;
            line["prompt_tokens"] = r.prompt_tokens;
            line["completion_tokens"] = r.tokens.size();
            ++sum.done;
        } catch (const std::exception& e) {
            line["output"] = nullptr;
            line["error"] = e.what();
            ++sum.failed;
            log_info("lancet: batch: item ", it->index, " (", it->id, ") failed: ", e.what());
        }
        line["seconds"] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
        line["skipped"] = false;
        manifest += line.dump() + "\n";
    }
    sum.manifest_part = (out / "manifest" / part_name(rank.rank, rank.world)).string();
    write_file_atomic(sum.manifest_part, manifest);
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return sum;
}

bool batch_parts_complete(const std::string& out, int world) {
    for (int r = 0; r < world; ++r)
        if (!fs::exists(fs::path(out) / "manifest" / part_name(r, world))) return false;
    return true;
}

MergeSummary merge_batch(const std::string& out) {
    const fs::path dir = fs::path(out) / "manifest";
    if (!fs::is_directory(dir)) fail("batch --merge: ", dir.string(), " does not exist");
    // The parts of one world: rank-R-of-W.jsonl for R in [0, W).
    int world = -1;
    std::vector<fs::path> parts;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        int r = 0, w = 0;
        char tail[8] = {};
        if (std::sscanf(name.c_str(), "rank-%d-of-%d.%7s", &r, &w, tail) != 3 ||
            std::string(tail) != "jsonl")
            continue;
        if (world >= 0 && w != world)
            fail("batch --merge: ", dir.string(), " holds parts of worlds of ", world, " and ", w,
                 " ranks; remove the stale ones");
        world = w;
        parts.push_back(e.path());
    }
    if (world < 0) fail("batch --merge: no manifest parts in ", dir.string());
    for (int r = 0; r < world; ++r)
        if (!fs::exists(dir / part_name(r, world)))
            fail("batch --merge: part ", part_name(r, world), " is missing (rank ", r,
                 " has not finished)");
    std::map<size_t, json> lines;
    for (const fs::path& p : parts) {
        std::ifstream f(p);
        std::string s;
        size_t n = 0;
        while (std::getline(f, s)) {
            ++n;
            if (s.empty()) continue;
            const json j = parse_strict_json(s, p.string() + ":" + std::to_string(n));
            if (!j.is_object() || !j.contains("item") || !j["item"].is_number_unsigned())
                fail(p.string(), ":", n, ": not a manifest line");
            const size_t item = j["item"];
            if (!lines.emplace(item, j).second)
                fail("batch --merge: item ", item, " appears in two parts");
        }
    }
    MergeSummary m;
    m.parts = parts.size();
    std::string all;
    for (const auto& [item, j] : lines) {
        ++m.items;
        if (!j["error"].is_null()) ++m.failed;
        all += j.dump() + "\n";
    }
    m.manifest = (fs::path(out) / "manifest.jsonl").string();
    write_file_atomic(m.manifest, all);
    return m;
}

}  // namespace lancet
