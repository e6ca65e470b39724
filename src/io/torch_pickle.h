// A restricted, non-executing unpickler for the data.pkl of a torch.save'd state dict.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace lancet {

// A storage the pickle refers to through a persistent id ('storage', torch.<T>Storage, key,
// location, numel); its bytes live in the zip entry <prefix>/data/<key>.
struct PickledStorage {
    std::string key;
    std::string location;  // "cpu", "cuda:0", ...: informational, bytes are read the same way
    DType dtype = DType::U8;
    uint64_t numel = 0;  // in elements of dtype
    uint64_t nbytes() const { return numel * dtype_size(dtype); }
};

// A tensor rebuilt (symbolically) by torch._utils._rebuild_tensor_v2/_v3, with its dotted name.
// Validated: shape/strides/offset are non-negative and every element lies inside the storage.
struct PickledTensor {
    std::string name;
    size_t storage = 0;  // index into StateDictPickle::storages
    DType dtype = DType::U8;
    uint64_t storage_offset = 0;  // in elements of dtype
    std::vector<int64_t> shape, strides;
};

struct StateDictPickle {
    std::vector<PickledStorage> storages;
    std::vector<PickledTensor> tensors;  // in pickle (= insertion) order
};

// Resource bounds; a pickle exceeding any of them is refused, so hostile input can neither
// exhaust memory nor recurse without bound.
struct UnpickleLimits {
    size_t max_stack = size_t{1} << 22;    // values on the stack at once (and open MARKs)
    size_t max_memo = size_t{1} << 22;     // memo entries
    size_t max_string = size_t{1} << 20;   // bytes in one string
    size_t max_objects = size_t{1} << 23;  // containers + strings + tensors created
    size_t max_items = size_t{1} << 24;    // values stored in containers, all together
    size_t max_depth = 64;                 // container nesting (and result walk depth)
    size_t max_walk = size_t{1} << 24;     // container visits while naming tensors
    size_t max_tensors = size_t{1} << 20;  // named tensors in the result
    size_t max_name = 4096;                // bytes in one dotted tensor name
    size_t max_dims = 16;                  // tensor rank
};

// Interprets `pkl` (pickle protocol 2-5 as torch.save writes it) without executing anything.
// Only these globals are accepted: collections.OrderedDict, torch._utils._rebuild_tensor_v2 /
// _rebuild_tensor_v3 / _rebuild_parameter / _rebuild_parameter_with_state, the typed storage
// classes torch.<Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool|Float8_e4m3fn|
// Float8_e5m2>Storage and torch.UntypedStorage, and dtype objects torch.float32 etc.; any
// other global is refused by name. The top-level object must be a dict; nested dicts, lists and
// tuples contribute tensors under dotted names ({"state_dict": {"w": t}} gives "state_dict.w",
// a list gives "x.0", "x.1"); non-tensor leaves (ints, strings, None...) are skipped, and the
// `_metadata` torch attaches to an OrderedDict through BUILD is ignored.
// Errors throw lancet::Error starting with `context` (e.g. "model.pth: data.pkl").
StateDictPickle unpickle_state_dict(std::string_view context, std::span<const uint8_t> pkl,
                                    const UnpickleLimits& limits = {});

}  // namespace lancet
