// PthWriter: writes a state dict in PyTorch's zip format (what torch.save produces and
// torch.load(weights_only=True) reads), streaming the tensor bytes so nothing is held in memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/tensor.h"
#include "io/temp_output.h"

namespace lancet {

// One tensor of a state dict to write.
struct PthTensorDecl {
    std::string name;
    DType dtype;
    Shape shape;
};
// The data.pkl bytes PthWriter writes for these tensors, in order (storage keys "0", "1", ...).
std::string state_dict_pickle(const std::vector<PthTensorDecl>& tensors);

// The file is a stored (uncompressed) zip whose records all live under "archive/":
//   archive/data.pkl    a protocol-2 pickle of an OrderedDict name -> _rebuild_tensor_v2(
//                       persistent storage ('storage', torch.<T>Storage, "<k>", 'cpu', numel),
//                       0, shape, contiguous strides, False, OrderedDict())
//   archive/byteorder   "little"
//   archive/data/<k>    the bytes of tensor k (one storage per tensor, keys in declaration order)
//   archive/version     "3\n"
// Every record's data starts on a 64-byte boundary (padding in an "FB" extra field, as torch's
// writer does); ZIP64 records are used only where an offset or size needs them.
// Like SafetensorsWriter: declare every tensor with add(), begin(), then append() the bytes in
// declaration order, finish(). Output goes to a temporary name in the same folder, fsynced and
// renamed by finish(); without finish() the temporary file is removed.
class PthWriter {
  public:
    // `force_zip64` writes every ZIP64 record even where sizes fit 32 bits (tests of that path,
    // which a real file reaches only past 4 GiB).
    explicit PthWriter(std::string path, bool force_zip64 = false);
    ~PthWriter();
    PthWriter(const PthWriter&) = delete;
    PthWriter& operator=(const PthWriter&) = delete;

    // F64, F32, F16, BF16, I64, I32, I16, I8, U8 or BOOL.
    void add(const std::string& name, DType dtype, const Shape& shape);
    void begin();
    // Bytes of the next unfinished tensor; may be called several times per tensor.
    void append(const void* data, size_t nbytes);
    void finish();

    uint64_t data_bytes() const { return data_bytes_; }

  private:
    struct Entry {
        std::string name;  // full zip name
        uint64_t size = 0, local_offset = 0;
        uint32_t crc = 0;
    };
    void write_raw(const void* data, size_t n);
    void open_entry(const std::string& name, uint64_t size);
    void close_entry();
    void write_entry(const std::string& name, const std::string& bytes);

    std::string path_;
    std::unique_ptr<TempFile> file_;  // from begin(); removed unless finish() committed it
    std::vector<PthTensorDecl> tensors_;
    std::unordered_set<std::string> names_;
    std::vector<Entry> entries_;
    bool force_zip64_ = false;
    bool begun_ = false, finished_ = false;
    uint64_t pos_ = 0;         // bytes written to the file
    size_t cur_ = 0;           // tensor being appended
    uint64_t cur_done_ = 0;    // its bytes written so far
    uint32_t cur_crc_ = 0;     // running CRC-32 of the open entry
    uint64_t data_bytes_ = 0;  // all tensor bytes
};

}  // namespace lancet
