// safetensors: a validating, memory-mapped reader (single file or sharded index) and a streaming
// writer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "io/mmap_file.h"
#include "io/temp_output.h"
#include "io/tensor_source.h"

namespace lancet {

// The header cap: real headers are kilobytes; this bounds what a hostile length can make us parse.
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

struct TensorEntry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin = 0, end = 0;  // byte range inside the data section
};

// Parses and validates a whole header against the size of the file it came from. Throws Error
// prefixed with `where`. Exposed separately so the fuzzer and tests can drive it on raw bytes.
struct ParsedHeader {
    std::vector<TensorEntry> tensors;  // in file order (sorted by offset)
    std::map<std::string, std::string> metadata;
    uint64_t data_start = 0;  // 8 + header length
};
ParsedHeader parse_safetensors_header(std::span<const uint8_t> file, const std::string& where);

// One mapped .safetensors file.
class SafetensorsFile {
  public:
    explicit SafetensorsFile(const std::string& path);

    const std::string& path() const { return file_.path(); }
    const std::vector<TensorEntry>& tensors() const { return header_.tensors; }
    const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
    const TensorEntry* find(const std::string& name) const;
    TensorView view(const TensorEntry& e) const;
    const MappedFile& mapping() const { return file_; }

  private:
    MappedFile file_;
    ParsedHeader header_;
    std::unordered_map<std::string, size_t> index_;
};

// A checkpoint: one .safetensors file or the shards named by a `*.safetensors.index.json`.
class Checkpoint : public TensorSource {
  public:
    // `path` is a .safetensors file, an index .json, or a folder holding model.safetensors or
    // model.safetensors.index.json.
    static std::unique_ptr<Checkpoint> open(const std::string& path);

    // Sorted tensor names across all shards.
    const std::vector<std::string>& names() const override { return names_; }
    bool has(const std::string& name) const override { return where_.count(name) != 0; }
    // Throws Error naming the checkpoint when the tensor is absent.
    TensorView view(const std::string& name) const;
    TensorView get(const std::string& name) const override { return view(name); }
    TensorInfo info(const std::string& name) const override;
    const TensorEntry& entry(const std::string& name) const;
    // The file that holds `name`.
    const std::string& file_of(const std::string& name) const override;
    const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
    // The description used in error messages (the path that was opened).
    const std::string& source() const override { return source_; }
    std::string format() const override { return "safetensors"; }
    std::map<std::string, std::string> metadata() const override {
        return files_.front()->metadata();
    }

  private:
    std::string source_;
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::unordered_map<std::string, std::pair<size_t, const TensorEntry*>> where_;
    std::vector<std::string> names_;
};

// Writes a safetensors file without holding the tensors in memory: every tensor is declared first
// (so the header with all offsets goes out first), then the bytes follow one tensor at a time in
// declaration order. Output goes to a temporary name in the same folder and is fsynced and renamed
// by finish(); if finish() is never reached the temporary file is removed.
class SafetensorsWriter {
  public:
    explicit SafetensorsWriter(std::string path);
    ~SafetensorsWriter();
    SafetensorsWriter(const SafetensorsWriter&) = delete;
    SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

    void add(const std::string& name, DType dtype, const Shape& shape);
    void set_metadata(const std::string& key, const std::string& value);

    // Writes the header; add() is no longer allowed afterwards.
    void begin();
    // Appends bytes to the next unfinished tensor; may be called several times per tensor.
    void append(const void* data, size_t nbytes);
    // The whole tensor at once; `name` must be the next one in declaration order.
    void write(const std::string& name, const void* data, size_t nbytes);
    // Name of the tensor the next append() belongs to (empty when all are written).
    std::string next_tensor() const;
    void finish();

    uint64_t total_bytes() const { return data_bytes_; }

  private:
    void write_raw(const void* data, size_t n);

    std::string path_;
    std::unique_ptr<TempFile> file_;  // from begin(); removed unless finish() committed it
    std::vector<TensorEntry> entries_;
    std::map<std::string, std::string> metadata_;
    std::unordered_map<std::string, size_t> names_;
    bool begun_ = false, finished_ = false;
    size_t cur_ = 0;         // index of the tensor being written
    uint64_t cur_done_ = 0;  // bytes of it written so far
    uint64_t data_bytes_ = 0;
};

// Writes a whole file to a temporary name next to `path`, fsyncs and renames it.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace lancet
