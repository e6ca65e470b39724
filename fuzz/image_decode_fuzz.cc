// libFuzzer target: PNG/JPEG/WebP decoding (and the EXIF reader) on arbitrary bytes must return or
// throw Error, with a small pixel limit so a hostile header cannot make the fuzzer allocate much.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    lancet::ImageReadOptions opts;
    opts.max_pixels = 1 << 20;
    try {
        lancet::decode_image({data, size}, "fuzz", opts);
    } catch (const lancet::Error&) {
    }
    lancet::exif_orientation({data, size});
    return 0;
}
