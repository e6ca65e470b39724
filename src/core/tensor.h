// TensorView: a typed, non-owning view of checkpoint bytes (PyTorch dimension order), and
// conversions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace lancet {

using Shape = std::vector<int64_t>;

// "[2048, 11008]"
std::string shape_str(const Shape& s);
// Product of the dimensions; 1 for a 0-dim tensor.
int64_t shape_numel(const Shape& s);

struct TensorView {
    DType dtype = DType::F32;
    Shape shape;
    const uint8_t* data = nullptr;  // not necessarily aligned: read through memcpy or convert
    size_t nbytes = 0;

    int64_t numel() const { return shape_numel(shape); }
};

// Converts numel() elements of any float or integer dtype to f32 / f64 (out must hold numel()).
void convert_to_f32(const TensorView& t, float* out);
void convert_to_f64(const TensorView& t, double* out);
std::vector<float> to_f32(const TensorView& t);

}  // namespace lancet
