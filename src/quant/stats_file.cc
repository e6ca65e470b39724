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

const char* const kSuffixes[] = {".mean_abs", ".max_abs", ".n_tokens", ".rows", ".hessian"};

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
    std::map<std::string, std::array<const TensorEntry*, 5>> parts;
    for (const TensorEntry& e : file_->tensors()) {
        int k = -1;
        for (int s = 0; s < 5; ++s)
            if (e.name.ends_with(kSuffixes[s])) k = s;
        if (k < 0)
            fail(path, ": tensor \"", e.name,
                 "\" is not <linear>.mean_abs, .max_abs, .n_tokens, .rows or .hessian");
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
        if (const TensorEntry* h = p[4]) {
            if (h->dtype != DType::F32 || h->shape != Shape{packed_size(in)})
                fail(path, ": ", h->name, " must be F32 [", packed_size(in), "] (the upper ",
                     "triangle of [", in, ", ", in, "]), is ", dtype_name(h->dtype), " ",
                     shape_str(h->shape));
            se.hessian = true;
        }
        entries_[base] = se;
    }
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

void StatsFileWriter::declare(const std::string& base, int in, int64_t n_rows, bool hessian) {
    if (begun_) fail("statistics writer: ", base, " declared after writing began");
    if (in <= 0 || n_rows < 0) fail("statistics writer: ", base, ": bad shape");
    if (!declared_.emplace(base, StatsEntry{in, n_rows, hessian}).second)
        fail("statistics writer: ", base, " declared twice");
    w_.add(base + ".mean_abs", DType::F32, {in});
    w_.add(base + ".max_abs", DType::F32, {in});
    w_.add(base + ".n_tokens", DType::I64, {1});
    w_.add(base + ".rows", DType::F32, {n_rows, in});
    if (hessian) w_.add(base + ".hessian", DType::F32, {packed_size(in)});
}

void StatsFileWriter::write(const std::string& base, const LinearStats& s) {
    auto it = declared_.find(base);
    if (it == declared_.end()) fail("statistics writer: ", base, " was not declared");
    if (s.in != it->second.in || s.n_rows() != it->second.n_rows ||
        s.mean_abs.size() != static_cast<size_t>(s.in) ||
        s.max_abs.size() != static_cast<size_t>(s.in) || s.has_hessian() != it->second.hessian ||
        (s.has_hessian() && static_cast<int64_t>(s.hessian.size()) != packed_size(s.in)))
        fail("statistics writer: ", base, " has width ", s.in, " and ", s.n_rows(), " rows",
             s.has_hessian() ? " and a Hessian" : "", "; declared ", it->second.in, " and ",
             it->second.n_rows, it->second.hessian ? " and a Hessian" : "");
    begun_ = true;
    w_.write(base + ".mean_abs", s.mean_abs.data(), s.mean_abs.size() * 4);
    w_.write(base + ".max_abs", s.max_abs.data(), s.max_abs.size() * 4);
    w_.write(base + ".n_tokens", &s.n_tokens, 8);
    w_.write(base + ".rows", s.rows.data(), s.rows.size() * 4);
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
        w.declare(base, pc.first, c.rows, all_hessian.at(base));
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
