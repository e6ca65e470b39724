// libFuzzer target: the safetensors header parser on arbitrary bytes must return or throw Error.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        lancet::parse_safetensors_header({data, size}, "fuzz");
    } catch (const lancet::Error&) {
    }
    return 0;
}
