// Reading, writing and merging activation-statistics files.
#include "quant/stats_file.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/json_file.h"
#include "io/output_dir.h"

namespace lancet::quant {

namespace {

// .mean_abs .. .rows are required; the rest optional: a partial statistics file's exact state
// (LinearStats::exact()) and the Hessian.
constexpr int kNumSuffixes = 7;
const char* const kSuffixes[kNumSuffixes] = {".mean_abs",    ".max_abs",  ".n_tokens", ".rows",
                                             ".sum_abs_q32", ".row_keys", ".hessian"};

std::vector<int64_t> read_i64(const TensorView& v) {
    std::vector<int64_t> r(static_cast<size_t>(v.numel()));
    if (!r.empty()) std::memcpy(r.data(), v.data, r.size() * sizeof(int64_t));
    return r;
}

std::vector<float> read_f32(const TensorView& v) {
    std::vector<float> r(static_cast<size_t>(v.numel()));
    if (!r.empty()) std::memcpy(r.data(), v.data, r.size() * sizeof(float));
    return r;
}

// Rows a merge of (rows, tokens) pairs keeps: quant::merge's rule applied pairwise, left to right.
struct Count {
    int64_t rows = 0, tokens = 0;
};
Count merged_count(Count a, Count b, int capacity) {
    int64_t k = std::min<int64_t>(capacity, a.tokens + b.tokens);
    if (a.rows < a.tokens) k = std::min(k, a.rows);
    if (b.rows < b.tokens) k = std::min(k, b.rows);
    return {k, a.tokens + b.tokens};
}

}  // namespace

// ---- reading ----

StatsFile::StatsFile(const std::string& path) {
    file_ = std::make_unique<SafetensorsFile>(path);
    const auto& md = file_->metadata();
    auto meta = [&](const char* key) -> const std::string* {
        auto it = md.find(key);
        return it == md.end() ? nullptr : &it->second;
    };
    const std::string* version = meta("lancet.stats.version");
    if (!version)
        fail(path, ": not a Lancet statistics file (no lancet.stats.version in the metadata)");
    if (*version != std::to_string(kStatsFormatVersion))
        fail(path, ": statistics format version ", *version, " is not supported (expected ",
             kStatsFormatVersion, ")");
    if (const std::string* t = meta("lancet.stats.tasks")) {
        const nlohmann::json j = parse_strict_json(*t, path + ": metadata lancet.stats.tasks");
        if (!j.is_array()) fail(path, ": metadata lancet.stats.tasks is not a JSON array");
        for (const auto& e : j) {
            if (!e.is_string()) fail(path, ": metadata lancet.stats.tasks holds a non-string");
            tasks_.push_back(e.get<std::string>());
        }
    }
    if (const std::string* c = meta("lancet.stats.capacity")) {
        char* end = nullptr;
        const long v = std::strtol(c->c_str(), &end, 10);
        if (end == c->c_str() || *end != '\0' || v < 0 || v > (1 << 24))
            fail(path, ": metadata lancet.stats.capacity = \"", *c, "\" is not a valid count");
        capacity_ = static_cast<int>(v);
    }

    // Group the tensors by linear and check dtypes and shapes.
    std::map<std::string, std::array<const TensorEntry*, kNumSuffixes>> parts;
    for (const TensorEntry& e : file_->tensors()) {
        int k = -1;
        for (int s = 0; s < kNumSuffixes; ++s)
            if (e.name.ends_with(kSuffixes[s])) k = s;
        if (k < 0)
            fail(path, ": tensor \"", e.name,
                 "\" is not <linear>.mean_abs, .max_abs, .n_tokens, .rows, .sum_abs_q32, "
                 ".row_keys or .hessian");
        const std::string base = e.name.substr(0, e.name.size() - std::strlen(kSuffixes[k]));
        parts[base][k] = &e;  // operator[] value-initializes: all null
    }
    for (const auto& [base, p] : parts) {
        for (int s = 0; s < 3; ++s)
            if (!p[s]) fail(path, ": linear \"", base, "\" has no ", base, kSuffixes[s]);
        const TensorEntry& mean = *p[0];
        const TensorEntry& max = *p[1];
        const TensorEntry& nt = *p[2];
        if (mean.dtype != DType::F32 || mean.shape.size() != 1 || mean.shape[0] <= 0 ||
            mean.shape[0] > (1 << 24))
            fail(path, ": ", mean.name, " must be F32 [in], is ", dtype_name(mean.dtype), " ",
                 shape_str(mean.shape));
        const int in = static_cast<int>(mean.shape[0]);
        if (max.dtype != DType::F32 || max.shape != Shape{in})
            fail(path, ": ", max.name, " must be F32 [", in, "], is ", dtype_name(max.dtype), " ",
                 shape_str(max.shape));
        if (nt.dtype != DType::I64 || shape_numel(nt.shape) != 1 || nt.shape.size() > 1)
            fail(path, ": ", nt.name, " must be I64 [1] or a scalar, is ", dtype_name(nt.dtype),
                 " ", shape_str(nt.shape));
        StatsEntry se;
        se.in = in;
        if (const TensorEntry* r = p[3]) {
            if (r->dtype != DType::F32 || r->shape.size() != 2 || r->shape[1] != in)
                fail(path, ": ", r->name, " must be F32 [rows, ", in, "], is ",
                     dtype_name(r->dtype), " ", shape_str(r->shape));
            se.n_rows = r->shape[0];
        }
        const TensorEntry* q = p[4];
        const TensorEntry* k = p[5];
        if ((q == nullptr) != (k == nullptr))
            fail(path, ": linear \"", base, "\" has only one of .sum_abs_q32 and .row_keys");
        if (q) {
            if (q->dtype != DType::I64 || q->shape != Shape{in, 2})
                fail(path, ": ", q->name, " must be I64 [", in, ", 2], is ", dtype_name(q->dtype),
                     " ", shape_str(q->shape));
            if (k->dtype != DType::I64 || k->shape != Shape{se.n_rows, 3})
                fail(path, ": ", k->name, " must be I64 [", se.n_rows, ", 3], is ",
                     dtype_name(k->dtype), " ", shape_str(k->shape));
            se.exact = true;
        }
        if (const TensorEntry* h = p[6]) {
            if (h->dtype != DType::F32 || h->shape != Shape{packed_size(in)})
                fail(path, ": ", h->name, " must be F32 [", packed_size(in), "] (the upper ",
                     "triangle of [", in, ", ", in, "]), is ", dtype_name(h->dtype), " ",
                     shape_str(h->shape));
            se.hessian = true;
        }
        entries_[base] = se;
    }
}

std::string StatsFile::metadata(const std::string& key) const {
    const auto& md = file_->metadata();
    const auto it = md.find(key);
    return it == md.end() ? std::string() : it->second;
}

int64_t StatsFile::n_tokens(const std::string& base) const {
    const TensorEntry* e = file_->find(base + ".n_tokens");
    if (!e) fail(path(), ": no statistics for \"", base, "\"");
    int64_t n = 0;
    std::memcpy(&n, file_->view(*e).data, sizeof n);
    if (n < 0) fail(path(), ": ", base, ".n_tokens = ", n, " is negative");
    return n;
}

LinearStats StatsFile::load(const std::string& base) const {
    auto it = entries_.find(base);
    if (it == entries_.end()) fail(path(), ": no statistics for \"", base, "\"");
    LinearStats s;
    s.in = it->second.in;
    auto view = [&](const char* suffix) { return file_->view(*file_->find(base + suffix)); };
    s.mean_abs = read_f32(view(".mean_abs"));
    s.max_abs = read_f32(view(".max_abs"));
    s.n_tokens = n_tokens(base);
    if (it->second.n_rows > 0) s.rows = read_f32(view(".rows"));
    if (it->second.exact) {
        s.sum_abs_q32 = read_i64(view(".sum_abs_q32"));
        if (it->second.n_rows > 0) s.row_keys = read_i64(view(".row_keys"));
    }
    if (s.n_rows() > s.n_tokens)
        fail(path(), ": ", base, ".rows holds ", s.n_rows(), " rows but n_tokens is ", s.n_tokens);
    for (const auto& [suffix, v] :
         {std::pair{".mean_abs", &s.mean_abs}, std::pair{".max_abs", &s.max_abs}})
        for (size_t i = 0; i < v->size(); ++i)
            if (!std::isfinite((*v)[i]) || (*v)[i] < 0)
                fail(path(), ": ", base, suffix, "[", i, "] = ", (*v)[i],
                     " (must be finite and >= 0)");
    for (size_t i = 0; i < s.rows.size(); ++i)
        if (!std::isfinite(s.rows[i]))
            fail(path(), ": ", base, ".rows[", i / s.in, ", ", i % s.in, "] = ", s.rows[i],
                 " is not finite");
    if (it->second.hessian) {
        const std::vector<float> h = read_f32(view(".hessian"));
        s.hessian.assign(h.begin(), h.end());
        // A Gram matrix has a finite, non-negative diagonal.
        for (int i = 0; i < s.in; ++i) {
            const double d = s.hessian[packed_index(s.in, i, i)];
            if (!std::isfinite(d) || d < 0)
                fail(path(), ": ", base, ".hessian diagonal [", i, "] = ", d,
                     " (must be finite and >= 0)");
        }
        for (size_t i = 0; i < s.hessian.size(); ++i)
            if (!std::isfinite(s.hessian[i]))
                fail(path(), ": ", base, ".hessian[", i, "] is not finite");
    }
    return s;
}

void StatsFile::release(const std::string& base) const {
    for (const char* suffix : kSuffixes)
        if (const TensorEntry* e = file_->find(base + suffix)) {
            const TensorView v = file_->view(*e);
            file_->mapping().release(static_cast<size_t>(v.data - file_->mapping().data()),
                                     v.nbytes);
        }
}

// ---- writing ----

StatsFileWriter::StatsFileWriter(const std::string& path, const std::vector<std::string>& tasks,
                                 int capacity)
    : w_(path) {
    w_.set_metadata("format", "pt");
    w_.set_metadata("lancet.stats.version", std::to_string(kStatsFormatVersion));
    w_.set_metadata("lancet.stats.tasks", nlohmann::json(tasks).dump());
    w_.set_metadata("lancet.stats.capacity", std::to_string(capacity));
}

void StatsFileWriter::set_metadata(const std::string& key, const std::string& value) {
    w_.set_metadata(key, value);
}

void StatsFileWriter::declare(const std::string& base, int in, int64_t n_rows, bool exact,
                              bool hessian) {
    if (begun_) fail("statistics writer: ", base, " declared after writing began");
    if (in <= 0 || n_rows < 0) fail("statistics writer: ", base, ": bad shape");
    if (!declared_.emplace(base, StatsEntry{in, n_rows, exact, hessian}).second)
        fail("statistics writer: ", base, " declared twice");
    w_.add(base + ".mean_abs", DType::F32, {in});
    w_.add(base + ".max_abs", DType::F32, {in});
    w_.add(base + ".n_tokens", DType::I64, {1});
    w_.add(base + ".rows", DType::F32, {n_rows, in});
    if (exact) {
        w_.add(base + ".sum_abs_q32", DType::I64, {in, 2});
        w_.add(base + ".row_keys", DType::I64, {n_rows, 3});
    }
    if (hessian) w_.add(base + ".hessian", DType::F32, {packed_size(in)});
}

void StatsFileWriter::write(const std::string& base, const LinearStats& s) {
    auto it = declared_.find(base);
    if (it == declared_.end()) fail("statistics writer: ", base, " was not declared");
    if (s.in != it->second.in || s.n_rows() != it->second.n_rows ||
        s.mean_abs.size() != static_cast<size_t>(s.in) ||
        s.max_abs.size() != static_cast<size_t>(s.in) || s.has_hessian() != it->second.hessian ||
        (s.has_hessian() && static_cast<int64_t>(s.hessian.size()) != packed_size(s.in)) ||
        (it->second.exact && (s.sum_abs_q32.size() != static_cast<size_t>(s.in) * 2 ||
                              s.row_keys.size() != static_cast<size_t>(s.n_rows()) * 3)))
        fail("statistics writer: ", base, " has width ", s.in, " and ", s.n_rows(), " rows",
             s.has_hessian() ? " and a Hessian" : "", "; declared ", it->second.in, " and ",
             it->second.n_rows, it->second.exact ? " with exact sums and row keys" : "",
             it->second.hessian ? " and a Hessian" : "");
    begun_ = true;
    w_.write(base + ".mean_abs", s.mean_abs.data(), s.mean_abs.size() * 4);
    w_.write(base + ".max_abs", s.max_abs.data(), s.max_abs.size() * 4);
    w_.write(base + ".n_tokens", &s.n_tokens, 8);
    w_.write(base + ".rows", s.rows.data(), s.rows.size() * 4);
    if (it->second.exact) {
        w_.write(base + ".sum_abs_q32", s.sum_abs_q32.data(), s.sum_abs_q32.size() * 8);
        w_.write(base + ".row_keys", s.row_keys.data(), s.row_keys.size() * 8);
    }
    if (s.has_hessian()) {
        // Rounded to f32 once, after the double accumulation; written in slices.
        constexpr size_t kSlice = 1 << 20;
        std::vector<float> f;
        for (size_t i = 0; i < s.hessian.size(); i += kSlice) {
            const size_t k = std::min(kSlice, s.hessian.size() - i);
            f.assign(s.hessian.begin() + i, s.hessian.begin() + i + k);
            if (w_.next_tensor() != base + ".hessian")
                fail("statistics writer: internal: writing ", base, ".hessian, expected ",
                     w_.next_tensor());
            w_.append(f.data(), f.size() * 4);
        }
    }
}

void StatsFileWriter::finish() { w_.finish(); }

// ---- whole files, partial files ----

void write_stats_file(const std::string& path, const std::vector<std::string>& tasks, int capacity,
                      const std::map<std::string, LinearStats>& stats, const PartialInfo* partial) {
    StatsFileWriter w(path, tasks, capacity);
    if (partial)
        w.set_metadata("lancet.stats.partial",
                       nlohmann::json({{"rank", partial->rank},
                                       {"world", partial->world},
                                       {"fingerprint", partial->fingerprint}})
                           .dump());
    for (const auto& [base, s] : stats)
        w.declare(base, s.in, s.n_rows(), partial != nullptr, s.has_hessian());
    for (const auto& [base, s] : stats) w.write(base, s);
    w.finish();
}

void reduce_partial_stats_files(const std::vector<std::string>& parts, const std::string& output) {
    if (parts.empty()) fail("stats reduce: no partial files");
    std::vector<std::unique_ptr<StatsFile>> files;
    std::vector<int> seen;
    PartialInfo first;
    for (const std::string& p : parts) {
        files.push_back(std::make_unique<StatsFile>(p));
        const StatsFile& f = *files.back();
        const std::string md = f.metadata("lancet.stats.partial");
        if (md.empty())
            fail(p, ": not a partial statistics file (no lancet.stats.partial metadata)");
        const nlohmann::json j = parse_strict_json(md, p + ": metadata lancet.stats.partial");
        PartialInfo info;
        try {
            info.rank = j.at("rank").get<int>();
            info.world = j.at("world").get<int>();
            info.fingerprint = j.at("fingerprint").get<std::string>();
        } catch (const std::exception&) {
            fail(p, ": metadata lancet.stats.partial needs rank, world and fingerprint");
        }
        if (info.world < 1 || info.rank < 0 || info.rank >= info.world)
            fail(p, ": rank ", info.rank, " of a world of ", info.world, " is not valid");
        if (files.size() == 1) {
            first = info;
            seen.assign(info.world, -1);
        } else {
            const StatsFile& f0 = *files.front();
            if (info.world != first.world)
                fail(p, ": a part of a world of ", info.world, " ranks; ", parts.front(), " is of ",
                     first.world);
            if (info.fingerprint != first.fingerprint)
                fail(p, ": a part of another calibration run (fingerprint ", info.fingerprint, ", ",
                     parts.front(), " has ", first.fingerprint, ")");
            if (f.tasks() != f0.tasks() || f.capacity() != f0.capacity())
                fail(p, ": tasks or capacity differ from ", parts.front());
        }
        if (seen[info.rank] >= 0)
            fail(p, ": rank ", info.rank, " is also ", parts[seen[info.rank]]);
        seen[info.rank] = static_cast<int>(files.size() - 1);
        for (const auto& [base, e] : f.entries()) {
            if (!e.exact) fail(p, ": ", base, " holds no exact sums (not a partial file)");
            // H depends on the order rows were added in: it does not reduce byte-identically.
            if (e.hessian && info.world > 1)
                fail(p, ": ", base, " holds a Hessian, which does not reduce across ", info.world,
                     " ranks");
        }
    }
    for (int r = 0; r < first.world; ++r)
        if (seen[r] < 0)
            fail("stats reduce: the part of rank ", r, " of ", first.world, " is missing");

    const int cap = files.front()->capacity();
    std::map<std::string, std::pair<int, int64_t>> plan;  // width, rows
    std::map<std::string, bool> hessian;                  // (only in a world of one)
    for (const auto& f : files)
        for (const auto& [base, e] : f->entries()) {
            hessian[base] = e.hessian;
            auto [it, fresh] = plan.try_emplace(base, e.in, 0);
            if (!fresh && it->second.first != e.in)
                fail(f->path(), ": ", base, " has ", e.in, " channels, another part ",
                     it->second.first);
            // Each part keeps min(cap, its tokens) rows, so the union keeps min(cap, their sum).
            it->second.second = std::min<int64_t>(cap, it->second.second + e.n_rows);
        }
    StatsFileWriter w(output, files.front()->tasks(), cap);
    for (const auto& [base, p] : plan) w.declare(base, p.first, p.second, false, hessian[base]);
    for (const auto& [base, p] : plan) {
        std::vector<LinearStats> loaded;
        for (const auto& f : files)
            if (f->has(base)) loaded.push_back(f->load(base));
        std::vector<const LinearStats*> ptrs;
        for (const LinearStats& l : loaded) ptrs.push_back(&l);
        LinearStats r = reduce_exact(ptrs, cap);
        r.sum_abs_q32.clear();
        r.row_keys.clear();
        w.write(base, r);
        for (const auto& f : files)
            if (f->has(base)) f->release(base);
    }
    w.finish();
}

// ---- merging ----

void merge_stats_files(const std::vector<std::string>& inputs, const std::string& output,
                       int capacity) {
    if (inputs.empty()) fail("stats merge: no input files");
    std::vector<std::unique_ptr<StatsFile>> files;
    std::vector<std::string> tasks;
    int cap = 0;
    for (const std::string& p : inputs) {
        files.push_back(std::make_unique<StatsFile>(p));
        for (const std::string& t : files.back()->tasks()) tasks.push_back(t);
        cap = std::max(cap, files.back()->capacity());
    }
    if (capacity > 0) cap = capacity;
    if (cap <= 0) cap = 512;

    // Union of the linears, with the merged row counts computed from the headers.
    std::map<std::string, std::pair<int, Count>> plan;
    std::map<std::string, bool> all_hessian;
    for (const auto& f : files)
        for (const auto& [base, e] : f->entries()) {
            auto [it, fresh] = plan.try_emplace(base, e.in, Count{});
            if (!fresh && it->second.first != e.in)
                fail(f->path(), ": ", base, " has ", e.in, " channels, ", inputs.front(),
                     " and the others before it ", it->second.first);
            auto [h, first] = all_hessian.try_emplace(base, e.hessian);
            if (!first) h->second = h->second && e.hessian;
        }
    StatsFileWriter w(output, tasks, cap);
    for (auto& [base, pc] : plan) {
        bool first = true;
        Count c;
        for (const auto& f : files) {
            if (!f->has(base)) continue;
            // n_tokens is data, not header: read the scalar to size the merge.
            const Count ci{f->entries().at(base).n_rows, f->n_tokens(base)};
            c = first ? ci : merged_count(c, ci, cap);
            first = false;
        }
        pc.second = c;
        w.declare(base, pc.first, c.rows, false, all_hessian.at(base));
    }
    for (const auto& [base, pc] : plan) {
        LinearStats acc;
        bool first = true;
        for (const auto& f : files) {
            if (!f->has(base)) continue;
            LinearStats s = f->load(base);
            f->release(base);
            if (first) {
                acc = std::move(s);
                first = false;
            } else {
                acc = merge(acc, s, cap, 0x3e46eull ^ name_hash(0, base));
            }
        }
        if (!all_hessian.at(base)) acc.hessian.clear();  // a lone file's H is not the union's
        w.write(base, acc);
    }
    w.finish();
}

}  // namespace lancet::quant
