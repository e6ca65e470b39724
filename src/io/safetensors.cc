// Implementation of the safetensors reader, shard index and streaming writer.
#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/json_file.h"
#include "io/output_dir.h"

namespace lancet {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

uint64_t read_u64_le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
    return !__builtin_mul_overflow(a, b, out);
}

}  // namespace

ParsedHeader parse_safetensors_header(std::span<const uint8_t> file, const std::string& where) {
    if (file.size() < 8)
        fail(where, ": truncated: ", file.size(), " bytes, a safetensors file has at least 8");
    const uint64_t n = read_u64_le(file.data());
    if (n > kMaxSafetensorsHeader)
        fail(where, ": header length ", n, " exceeds the ", kMaxSafetensorsHeader, "-byte limit");
    if (n > file.size() - 8)
        fail(where, ": header length ", n, " runs past the end of the file (", file.size(),
             " bytes)");
    if (n < 2) fail(where, ": header length ", n, " is too small for a JSON object");

    ParsedHeader h;
    h.data_start = 8 + n;
    const uint64_t data_size = file.size() - h.data_start;
    const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), n);
    const json j = parse_strict_json(text, where + ": header");
    if (!j.is_object()) fail(where, ": header is not a JSON object");

    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& name = it.key();
        const json& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) fail(where, ": __metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string())
                    fail(where, ": __metadata__ value for \"", m.key(), "\" is not a string");
                h.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string at = where + ": tensor \"" + name + "\"";
        if (name.empty()) fail(where, ": tensor with an empty name");
        if (!v.is_object()) fail(at, ": entry is not an object");
        const auto dt = v.find("dtype");
        const auto sh = v.find("shape");
        const auto off = v.find("data_offsets");
        if (dt == v.end() || !dt->is_string()) fail(at, ": missing or non-string dtype");
        if (sh == v.end() || !sh->is_array()) fail(at, ": missing or non-array shape");
        if (off == v.end() || !off->is_array() || off->size() != 2)
            fail(at, ": data_offsets must be an array of two integers");
        TensorEntry e;
        e.name = name;
        const auto dtype = dtype_from_name(dt->get<std::string>());
        if (!dtype) fail(at, ": unknown dtype \"", dt->get<std::string>(), "\"");
        e.dtype = *dtype;
        uint64_t numel = 1;
        for (const json& d : *sh) {
            if (!d.is_number_unsigned())
                fail(at, ": shape ", sh->dump(), " is not non-negative integers");
            const uint64_t dim = d.get<uint64_t>();
            if (!checked_mul(numel, dim, &numel)) fail(at, ": shape ", sh->dump(), " overflows");
            e.shape.push_back(static_cast<int64_t>(dim));
        }
        if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
            fail(at, ": data_offsets ", off->dump(), " are not non-negative integers");
        e.begin = (*off)[0].get<uint64_t>();
        e.end = (*off)[1].get<uint64_t>();
        if (e.begin > e.end) fail(at, ": data_offsets ", off->dump(), " are reversed");
        uint64_t bytes;
        if (!checked_mul(numel, dtype_size(e.dtype), &bytes) || bytes != e.end - e.begin)
            fail(at, ": shape ", shape_str(e.shape), " x ", dtype_name(e.dtype), " needs ",
                 numel * dtype_size(e.dtype), " bytes but data_offsets ", off->dump(), " hold ",
                 e.end - e.begin);
        if (e.end > data_size)
            fail(at, ": data_offsets ", off->dump(), " run past the end of the data section (",
                 data_size, " bytes; file truncated?)");
        if (e.shape.size() > 16) fail(at, ": rank ", e.shape.size(), " is absurd");
        h.tensors.push_back(std::move(e));
    }
    std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (size_t i = 1; i < h.tensors.size(); ++i) {
        const TensorEntry& a = h.tensors[i - 1];
        const TensorEntry& b = h.tensors[i];
        // Zero-sized tensors own no bytes, so they cannot overlap anything.
        if (a.end > b.begin && a.begin != a.end && b.begin != b.end)
            fail(where, ": tensors \"", a.name, "\" [", a.begin, ", ", a.end, ") and \"", b.name,
                 "\" [", b.begin, ", ", b.end, ") overlap");
    }
    return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
    header_ = parse_safetensors_header({file_.data(), file_.size()}, path);
    for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const TensorEntry* SafetensorsFile::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

TensorView SafetensorsFile::view(const TensorEntry& e) const {
    TensorView v;
    v.dtype = e.dtype;
    v.shape = e.shape;
    v.data = file_.data() + header_.data_start + e.begin;
    v.nbytes = e.end - e.begin;
    return v;
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& path_in) {
    std::error_code ec;
    fs::path path = path_in;
    if (fs::is_directory(path, ec)) {
        if (fs::exists(path / "model.safetensors.index.json"))
            path /= "model.safetensors.index.json";
        else if (fs::exists(path / "model.safetensors"))
            path /= "model.safetensors";
        else
            fail(path_in, ": no model.safetensors or model.safetensors.index.json in this folder");
    } else if (!fs::exists(path, ec)) {
        fail(path_in, ": no such file or folder");
    }
    auto ck = std::unique_ptr<Checkpoint>(new Checkpoint());
    ck->source_ = path.string();
    const std::string p = path.string();
    if (p.size() >= 5 && p.compare(p.size() - 5, 5, ".json") == 0) {
        std::ifstream in(path, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        if (!in) fail(p, ": cannot read");
        const std::string text = ss.str();
        if (text.size() > kMaxSafetensorsHeader) fail(p, ": index file is absurdly large");
        const json j = parse_strict_json(text, p);
        if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
            fail(p, ": not a safetensors index (no \"weight_map\" object)");
        std::map<std::string, size_t> shard_index;
        std::vector<std::pair<std::string, std::string>> wanted;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it.value().is_string())
                fail(p, ": weight_map entry \"", it.key(), "\" is not a file name");
            const std::string shard = it.value().get<std::string>();
            // Shards live beside the index; a name with a path must not reach elsewhere.
            if (shard.empty() || shard.find('/') != std::string::npos || shard == "." ||
                shard == "..")
                fail(p, ": weight_map entry \"", it.key(), "\" names an invalid shard \"", shard,
                     "\"");
            if (!shard_index.count(shard)) {
                const fs::path sp = path.parent_path() / shard;
                if (!fs::exists(sp, ec))
                    fail(p, ": missing shard ", sp.string(), " (holds \"", it.key(), "\")");
                shard_index[shard] = ck->files_.size();
                ck->files_.push_back(std::make_unique<SafetensorsFile>(sp.string()));
            }
            wanted.emplace_back(it.key(), shard);
        }
        if (ck->files_.empty()) fail(p, ": weight_map is empty");
        for (const auto& [name, shard] : wanted) {
            const size_t fi = shard_index[shard];
            const TensorEntry* e = ck->files_[fi]->find(name);
            if (!e) fail(p, ": tensor \"", name, "\" is mapped to ", shard, " but is not in it");
            ck->where_[name] = {fi, e};
        }
        for (size_t fi = 0; fi < ck->files_.size(); ++fi)
            for (const TensorEntry& e : ck->files_[fi]->tensors())
                if (!ck->where_.count(e.name))
                    fail(ck->files_[fi]->path(), ": tensor \"", e.name,
                         "\" is not listed in the index ", p);
    } else {
        ck->files_.push_back(std::make_unique<SafetensorsFile>(p));
        for (const TensorEntry& e : ck->files_[0]->tensors()) ck->where_[e.name] = {0, &e};
    }
    for (const auto& kv : ck->where_) ck->names_.push_back(kv.first);
    std::sort(ck->names_.begin(), ck->names_.end());
    return ck;
}

const TensorEntry& Checkpoint::entry(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) fail(source_, ": tensor \"", name, "\" is missing");
    return *it->second.second;
}

TensorView Checkpoint::view(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) fail(source_, ": tensor \"", name, "\" is missing");
    return files_[it->second.first]->view(*it->second.second);
}

TensorInfo Checkpoint::info(const std::string& name) const {
    const TensorEntry& e = entry(name);
    return {e.dtype, e.shape, e.end - e.begin};
}

const std::string& Checkpoint::file_of(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) fail(source_, ": tensor \"", name, "\" is missing");
    return files_[it->second.first]->path();
}

// ---- writer ----

SafetensorsWriter::SafetensorsWriter(std::string path) : path_(std::move(path)) {
    check_not_source(path_);
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::add(const std::string& name, DType dtype, const Shape& shape) {
    if (begun_) fail(path_, ": tensor \"", name, "\" added after the header was written");
    if (name.empty() || name == "__metadata__") fail(path_, ": invalid tensor name \"", name, "\"");
    if (!names_.emplace(name, entries_.size()).second)
        fail(path_, ": tensor \"", name, "\" added twice");
    TensorEntry e;
    e.name = name;
    e.dtype = dtype;
    e.shape = shape;
    e.begin = data_bytes_;
    e.end = data_bytes_ + static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
    data_bytes_ = e.end;
    entries_.push_back(std::move(e));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
    if (begun_) fail(path_, ": metadata set after the header was written");
    metadata_[key] = value;
}

void SafetensorsWriter::write_raw(const void* data, size_t n) { file_->write_all(data, n); }

void SafetensorsWriter::begin() {
    if (begun_) return;
    json h = json::object();
    if (!metadata_.empty()) h["__metadata__"] = metadata_;
    for (const TensorEntry& e : entries_)
        h[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                     {"shape", e.shape},
                     {"data_offsets", {e.begin, e.end}}};
    std::string text = h.dump();
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    while ((8 + text.size()) % 8 != 0) text.push_back(' ');

    file_ = std::make_unique<TempFile>(path_);
    begun_ = true;
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    write_raw(len, 8);
    write_raw(text.data(), text.size());
    cur_ = 0;
    cur_done_ = 0;
    while (cur_ < entries_.size() && entries_[cur_].begin == entries_[cur_].end) ++cur_;
}

void SafetensorsWriter::append(const void* data, size_t nbytes) {
    if (!begun_) begin();
    const auto* p = static_cast<const uint8_t*>(data);
    while (nbytes > 0) {
        if (cur_ >= entries_.size()) fail(path_, ": more bytes written than declared");
        const TensorEntry& e = entries_[cur_];
        const uint64_t room = (e.end - e.begin) - cur_done_;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(room, nbytes));
        write_raw(p, take);
        p += take;
        nbytes -= take;
        cur_done_ += take;
        if (cur_done_ == e.end - e.begin) {
            ++cur_;
            cur_done_ = 0;
            while (cur_ < entries_.size() && entries_[cur_].begin == entries_[cur_].end) ++cur_;
        }
    }
}

void SafetensorsWriter::write(const std::string& name, const void* data, size_t nbytes) {
    if (!begun_) begin();
    auto it = names_.find(name);
    if (it != names_.end() && nbytes == 0 && entries_[it->second].begin == entries_[it->second].end)
        return;  // zero-sized tensors own no bytes
    if (cur_ >= entries_.size() || entries_[cur_].name != name || cur_done_ != 0)
        fail(path_, ": tensor \"", name, "\" written out of order (next is \"", next_tensor(),
             "\")");
    const TensorEntry& e = entries_[cur_];
    if (nbytes != e.end - e.begin)
        fail(path_, ": tensor \"", name, "\" has ", e.end - e.begin, " bytes, got ", nbytes);
    append(data, nbytes);
}

std::string SafetensorsWriter::next_tensor() const {
    return cur_ < entries_.size() ? entries_[cur_].name : std::string();
}

void SafetensorsWriter::finish() {
    if (!begun_) begin();
    if (cur_ != entries_.size())
        fail(path_, ": finished before tensor \"", entries_[cur_].name, "\" was written");
    file_->commit();
    finished_ = true;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
    check_not_source(path);
    TempFile f(path);
    f.write_all(bytes.data(), bytes.size());
    f.commit();
}

}  // namespace lancet
