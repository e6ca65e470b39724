// PthFile: reads the tensors of a torch.save'd state dict (zip format) without executing any code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "io/tensor_source.h"
#include "io/zip_reader.h"

namespace lancet {

class MappedFile;

// One tensor of the checkpoint: metadata plus a zero-copy view of its storage in the mapping.
struct PthTensor {
    std::string name;  // dotted path through nested dicts/lists ("encoder.conv1.weight")
    DType dtype = DType::U8;
    std::vector<int64_t> shape, strides;  // strides in elements, as torch reports them
    uint64_t storage_offset = 0;          // in elements
    std::string storage_key;              // the zip entry is <prefix>/data/<storage_key>
    std::span<const uint8_t> storage;     // the whole storage's bytes (shared between views)

    uint64_t numel() const;
    uint64_t nbytes() const { return numel() * dtype_size(dtype); }
    // First element; with is_contiguous() the tensor is the nbytes() bytes from here.
    const uint8_t* data() const { return storage.data() + storage_offset * dtype_size(dtype); }
    // Row-major contiguous (dims of size 1 may have any stride), or empty.
    bool is_contiguous() const;
    // The tensor's bytes in row-major order: zero-copy; throws Error naming `file` and the tensor
    // unless is_contiguous().
    std::span<const uint8_t> contiguous_bytes(std::string_view file) const;
    // The tensor's bytes in row-major order, gathered through the strides into a new buffer.
    std::vector<uint8_t> to_contiguous() const;
};

class PthFile {
  public:
    // Maps and parses `path`. Throws Error naming the file (and entry/tensor) on any problem:
    // not a zip, legacy pre-1.6 format, big-endian, a refused pickle global, a missing or
    // short storage, etc.
    explicit PthFile(const std::string& path);
    // Parses bytes already in memory (tests, fuzzing); `label` names them in errors and the
    // bytes must outlive the object.
    PthFile(std::string label, std::span<const uint8_t> bytes);
    ~PthFile();
    PthFile(const PthFile&) = delete;
    PthFile& operator=(const PthFile&) = delete;

    const std::string& label() const { return label_; }
    // The archive's top folder ("archive", or the file's stem for older torch).
    const std::string& prefix() const { return prefix_; }
    const std::vector<PthTensor>& tensors() const { return tensors_; }
    const PthTensor* find(std::string_view name) const;
    // Like find(), but throws Error "<file>: no tensor '<name>'".
    const PthTensor& at(std::string_view name) const;
    // The tensors whose names start with `prefix` + ".", with that part removed: use
    // under("state_dict") for a checkpoint wrapping {"state_dict": ...}.
    std::vector<PthTensor> under(std::string_view prefix) const;
    // Recomputes every storage's CRC-32 (reads all tensor bytes): false on a mismatch.
    bool verify_crc() const;
    // Drops the whole pages of `bytes` from this process's memory when they lie in the file's
    // mapping (MappedFile::release; read again from the file if touched later); a no-op for
    // other memory and for a PthFile over bytes in memory. For loaders that repack tensors.
    void release(std::span<const uint8_t> bytes) const;

  private:
    void parse();

    std::string label_;
    std::unique_ptr<MappedFile> file_;
    std::span<const uint8_t> bytes_;
    std::unique_ptr<ZipReader> zip_;
    std::string prefix_;
    std::vector<PthTensor> tensors_;
    std::unordered_map<std::string, size_t> by_name_;
};

// A .pth state dict as a TensorSource (names in file order). A tensor stored with strides is
// gathered into memory on its first get() and kept; contiguous ones are views of the mapping.
class PthSource : public TensorSource {
  public:
    explicit PthSource(const std::string& path);

    const PthFile& file() const { return file_; }
    const std::string& source() const override { return file_.label(); }
    std::string format() const override { return "PyTorch zip state dict"; }
    const std::vector<std::string>& names() const override { return names_; }
    bool has(const std::string& name) const override { return file_.find(name) != nullptr; }
    TensorInfo info(const std::string& name) const override;
    TensorView get(const std::string& name) const override;
    const std::string& file_of(const std::string& name) const override;

  private:
    PthFile file_;
    std::vector<std::string> names_;
    mutable std::mutex gathered_mutex_;
    mutable std::map<std::string, std::vector<uint8_t>> gathered_;
};

}  // namespace lancet
