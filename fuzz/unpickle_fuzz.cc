// libFuzzer target: the restricted unpickler on raw bytes must return or throw lancet::Error.
// Build: CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DLANCET_FUZZ=ON -DLANCET_BUILD_TESTS=OFF;
// run: build-fuzz/unpickle_fuzz -max_total_time=60 CORPUS (seed: the data.pkl entries of
// tests/data/pth/*.pth).
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
