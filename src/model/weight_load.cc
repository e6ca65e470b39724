// Loading plain tensors and linears from a LanceCheckpoint.
#include "model/weight_load.h"

#include <cstring>

#include "core/error.h"
#include "core/numeric.h"

namespace lancet {

std::vector<float> load_f32(const LanceCheckpoint& ck, const std::string& name, int64_t numel) {
    const TensorView t = ck.tensor(name);
    if (t.numel() != numel)
        fail(ck.dir(), ": ", name, " has ", t.numel(), " values, expected ", numel);
    return to_f32(t);
}

kernels::LinearWeight load_linear(const LanceCheckpoint& ck, const std::string& base, size_t out,
                                  size_t in, bool to_bf16) {
    if (ck.is_quantized(base)) {
        const QuantizedLinearView q = ck.quantized(base);
        if (static_cast<size_t>(q.out) != out || static_cast<size_t>(q.in) != in)
            fail(ck.dir(), ": ", base, " is [", q.out, ", ", q.in, "], expected [", out, ", ", in,
                 "]");
        const bool nvfp4 = q.format == QuantFormat::Nvfp4;
        if (nvfp4 && q.group_size != static_cast<int>(kernels::kNvfp4Block))
            fail(ck.dir(), ": ", base, " has NVFP4 block size ", q.group_size, "; the format has ",
                 kernels::kNvfp4Block);
        const char* scales_name = nvfp4 ? ".scales_bf16" : ".scales";
        if (q.scales.dtype != DType::BF16)
            fail(ck.dir(), ": ", base, scales_name, " is ", dtype_name(q.scales.dtype),
                 ", expected BF16");
        // The mapped bytes may be unaligned for uint16_t; copy the scales.
        std::vector<uint16_t> scales(q.scales.nbytes / 2);
        std::memcpy(scales.data(), q.scales.data, q.scales.nbytes);
        kernels::LinearWeight w;
        try {
            switch (q.format) {
                case QuantFormat::Int4:
                    w = kernels::LinearWeight::from_awq_int4(q.qweight.data, scales.data(),
                                                             q.zeros.data, out, in, q.group_size);
                    break;
                case QuantFormat::Int5:
                    w = kernels::LinearWeight::from_awq_int5(q.qweight.data, scales.data(),
                                                             q.zeros.data, out, in, q.group_size);
                    break;
                case QuantFormat::Nvfp4:
                    w = kernels::LinearWeight::from_nvfp4(q.qweight.data, scales.data(), out, in);
                    break;
            }
        } catch (const Error& e) {
            fail(ck.dir(), ": ", base, ": ", e.what());  // say which tensor of which folder
        }
        // The repacked copy is what runs; drop the file pages so RSS holds the weights once.
        for (const TensorView* v : {&q.qweight, &q.scales, &q.zeros})
            if (v->data) ck.release(*v);
        return w;
    }
    const TensorView t = ck.tensor(base + ".weight");
    if (t.numel() != static_cast<int64_t>(out * in))
        fail(ck.dir(), ": ", base, ".weight has ", t.numel(), " values, expected ", out * in);
    kernels::LinearWeight w;
    if (to_bf16 && t.dtype != DType::BF16) {
        const std::vector<float> f = to_f32(t);
        std::vector<uint16_t> h(f.size());
        for (size_t i = 0; i < f.size(); ++i) h[i] = f32_to_bf16(f[i]);
        w = kernels::LinearWeight::from_bf16(h.data(), out, in);
    } else if (t.dtype == DType::BF16 && reinterpret_cast<uintptr_t>(t.data) % 2 == 0) {
        w = kernels::LinearWeight::from_bf16(reinterpret_cast<const uint16_t*>(t.data), out, in);
    } else if (t.dtype == DType::F32 && reinterpret_cast<uintptr_t>(t.data) % 4 == 0) {
        w = kernels::LinearWeight::from_f32(reinterpret_cast<const float*>(t.data), out, in);
    } else {
        const std::vector<float> f = to_f32(t);
        w = kernels::LinearWeight::from_f32(f.data(), out, in);
    }
    ck.release(t);
    return w;
}

}  // namespace lancet
