// Opening a TensorSource by the form of its path.
#include "io/tensor_source.h"

#include "io/pth.h"
#include "io/safetensors.h"

namespace lancet {

std::unique_ptr<TensorSource> open_tensor_source(const std::string& path) {
    if (path.ends_with(".pth") || path.ends_with(".pt")) return std::make_unique<PthSource>(path);
    return Checkpoint::open(path);
}

}  // namespace lancet
