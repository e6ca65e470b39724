// libFuzzer target: the restricted unpickler on raw bytes must return or throw lancet::Error.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const auto r = lancet::unpickle_state_dict("fuzz: data.pkl", {data, size});
        // Every tensor must point at a storage the result lists.
        for (const auto& t : r.tensors)
            if (t.storage >= r.storages.size()) __builtin_trap();
    } catch (const lancet::Error&) {
    }
    return 0;
}
