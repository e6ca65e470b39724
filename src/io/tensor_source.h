// TensorSource: one reader interface over stored tensors, whatever the container: safetensors
// (a file or an index of shards, io/safetensors.h) or a PyTorch zip state dict (io/pth.h). Both
// yield TensorViews, so `inspect` and model loaders (the Wan VAE ships as a .pth) need not know
// which one they read.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lancet {

// What a tensor is, without touching its bytes.
struct TensorInfo {
    DType dtype = DType::F32;
    Shape shape;
    uint64_t nbytes = 0;
};

class TensorSource {
  public:
    virtual ~TensorSource() = default;

    // The path that was opened, for messages.
    virtual const std::string& source() const = 0;
    // "safetensors" or "PyTorch zip state dict".
    virtual std::string format() const = 0;
    // Every tensor name, in a fixed order (sorted for safetensors, file order for .pth).
    virtual const std::vector<std::string>& names() const = 0;
    virtual bool has(const std::string& name) const = 0;
    // Throw Error naming the source when `name` is absent.
    virtual TensorInfo info(const std::string& name) const = 0;
    // The tensor's bytes in row-major order, valid while the source lives: zero-copy from the
    // mapping where the file stores it contiguously; otherwise gathered once into memory the
    // source keeps.
    virtual TensorView get(const std::string& name) const = 0;
    // The file that holds `name` (a shard of an index, or the file itself).
    virtual const std::string& file_of(const std::string& name) const = 0;
    // Container-level string metadata (safetensors `__metadata__`; empty for .pth).
    virtual std::map<std::string, std::string> metadata() const { return {}; }
};

// Opens `path` by its form: `.pth` / `.pt` as a PyTorch state dict, anything else as safetensors
// (a .safetensors file, an index .json, or a folder holding model.safetensors[.index.json]).
std::unique_ptr<TensorSource> open_tensor_source(const std::string& path);

}  // namespace lancet
