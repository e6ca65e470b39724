// Implementation of TensorView helpers and dtype conversion loops.
#include "core/tensor.h"

#include <cstring>

#include "core/numeric.h"

namespace lancet {

std::string shape_str(const Shape& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) {
        if (i) r += ", ";
        r += std::to_string(s[i]);
    }
    return r + "]";
}

int64_t shape_numel(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

namespace {

template <typename T>
T load(const uint8_t* p, size_t i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    return v;
}

template <typename Out>
void convert(const TensorView& t, Out* out) {
    const size_t n = static_cast<size_t>(t.numel());
    const uint8_t* p = t.data;
    switch (t.dtype) {
        case DType::F64:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<double>(p, i));
            break;
        case DType::F32:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<float>(p, i));
            break;
        case DType::F16:
            for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(load<uint16_t>(p, i));
            break;
        case DType::BF16:
            for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(load<uint16_t>(p, i));
            break;
        case DType::I64:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<int64_t>(p, i));
            break;
        case DType::I32:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<int32_t>(p, i));
            break;
        case DType::I16:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<int16_t>(p, i));
            break;
        case DType::I8:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<int8_t>(p, i));
            break;
        case DType::U8:
        case DType::BOOL:
            for (size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(p[i]);
            break;
        case DType::F8_E4M3:
            for (size_t i = 0; i < n; ++i) out[i] = f8e4m3_to_f32(p[i]);
            break;
        case DType::F8_E5M2:
            for (size_t i = 0; i < n; ++i) out[i] = f8e5m2_to_f32(p[i]);
            break;
    }
}

}  // namespace

void convert_to_f32(const TensorView& t, float* out) { convert(t, out); }
void convert_to_f64(const TensorView& t, double* out) { convert(t, out); }

std::vector<float> to_f32(const TensorView& t) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    convert_to_f32(t, v.data());
    return v;
}

}  // namespace lancet
