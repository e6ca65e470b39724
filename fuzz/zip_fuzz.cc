// libFuzzer target: ZipReader and PthFile on in-memory archives must return or throw lancet::Error.
// Build: CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DLANCET_FUZZ=ON -DLANCET_BUILD_TESTS=OFF;
// run: build-fuzz/zip_fuzz -max_total_time=60 CORPUS (seed: a copy of tests/data/pth/).
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/pth.h"
#include "io/zip_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::span<const uint8_t> bytes(data, size);
    try {
        lancet::ZipReader z("fuzz.zip", bytes);
        for (const auto& e : z.entries()) {
            try {
                z.read(e, 1 << 20);
            } catch (const lancet::Error&) {
            }
        }
    } catch (const lancet::Error&) {
    }
    try {
        lancet::PthFile f("fuzz.pth", bytes);
        for (const auto& t : f.tensors()) {
            // Views must stay inside their storage, and the storage inside the input.
            if (t.storage.data() < data || t.storage.data() + t.storage.size() > data + size)
                __builtin_trap();
            if (t.is_contiguous() && t.data() + t.nbytes() > t.storage.data() + t.storage.size())
                __builtin_trap();
            if (t.nbytes() <= (1u << 20)) t.to_contiguous();
        }
        f.verify_crc();
    } catch (const lancet::Error&) {
    }
    return 0;
}
