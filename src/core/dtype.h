// DType: the element types safetensors and PyTorch checkpoints store, with names and sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lancet {

enum class DType : uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2 };

constexpr size_t dtype_size(DType t) {
    switch (t) {
        case DType::F64:
        case DType::I64:
            return 8;
        case DType::F32:
        case DType::I32:
            return 4;
        case DType::F16:
        case DType::BF16:
        case DType::I16:
            return 2;
        default:
            return 1;
    }
}

// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...).
constexpr std::string_view dtype_name(DType t) {
    switch (t) {
        case DType::F64:
            return "F64";
        case DType::F32:
            return "F32";
        case DType::F16:
            return "F16";
        case DType::BF16:
            return "BF16";
        case DType::I64:
            return "I64";
        case DType::I32:
            return "I32";
        case DType::I16:
            return "I16";
        case DType::I8:
            return "I8";
        case DType::U8:
            return "U8";
        case DType::BOOL:
            return "BOOL";
        case DType::F8_E4M3:
            return "F8_E4M3";
        case DType::F8_E5M2:
            return "F8_E5M2";
    }
    return "?";
}

inline std::optional<DType> dtype_from_name(std::string_view s) {
    for (int i = 0; i <= static_cast<int>(DType::F8_E5M2); ++i) {
        auto t = static_cast<DType>(i);
        if (dtype_name(t) == s) return t;
    }
    return std::nullopt;
}

constexpr bool dtype_is_float(DType t) {
    return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16 ||
           t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

}  // namespace lancet
