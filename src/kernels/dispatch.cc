// Run-time ISA selection; the only file that decides which kernel implementation runs.
#include "kernels/dispatch.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>

#include "core/error.h"
#include "kernels/gemm.h"
#include "kernels/linear_kernels.h"
#include "kernels/ops.h"
#include "kernels/ops_kernels.h"
#include "kernels/probe.h"

namespace lancet::kernels {
namespace {

std::mutex g_mutex;
std::optional<Isa> g_forced;
std::optional<Isa> g_env;  // resolved once from LANCET_ISA
std::optional<ActMode> g_act_forced;
std::optional<ActMode> g_act_env;  // resolved once from LANCET_ACT
std::optional<Bf16Act> g_bf16_act_forced;
std::optional<Bf16Act> g_bf16_act_env;  // resolved once from LANCET_BF16_ACT
std::optional<AttnPrecision> g_attn_forced;
std::optional<AttnPrecision> g_attn_env;  // resolved once from LANCET_ATTN

AttnPrecision parse_attn_env() {
    const char* v = std::getenv("LANCET_ATTN");
    if (!v || !*v || std::strcmp(v, "f32") == 0) return AttnPrecision::F32;
    if (std::strcmp(v, "bf16") == 0) return AttnPrecision::Bf16;
    if (std::strcmp(v, "auto") == 0) return AttnPrecision::Auto;
    fail("LANCET_ATTN=", v, ": unknown attention precision (expected f32, bf16 or auto)");
}

Bf16Act parse_bf16_act_env() {
    const char* v = std::getenv("LANCET_BF16_ACT");
    if (!v || !*v || std::strcmp(v, "f32") == 0) return Bf16Act::F32;
    if (std::strcmp(v, "bf16") == 0) return Bf16Act::Bf16;
    if (std::strcmp(v, "auto") == 0) return Bf16Act::Auto;
    fail("LANCET_BF16_ACT=", v,
         ": unknown activation mode for bf16 weights (expected f32, bf16 or auto)");
}

ActMode parse_act_env() {
    const char* v = std::getenv("LANCET_ACT");
    if (!v || !*v || std::strcmp(v, "f32") == 0) return ActMode::F32;
    if (std::strcmp(v, "int8") == 0) return ActMode::Int8;
    if (std::strcmp(v, "bf16") == 0) return ActMode::Bf16;
    if (std::strcmp(v, "auto") == 0) return ActMode::Auto;
    fail("LANCET_ACT=", v, ": unknown activation mode (expected f32, int8, bf16 or auto)");
}

Isa parse_env() {
    const char* v = std::getenv("LANCET_ISA");
    if (!v || !*v) return best_isa();
    Isa isa;
    if (std::strcmp(v, "scalar") == 0)
        isa = Isa::Scalar;
    else if (std::strcmp(v, "avx2") == 0)
        isa = Isa::Avx2;
    else if (std::strcmp(v, "avx512") == 0)
        isa = Isa::Avx512;
    else if (std::strcmp(v, "amx") == 0)
        isa = Isa::Amx;
    else
        fail("LANCET_ISA=", v, ": unknown ISA (expected scalar, avx2, avx512 or amx)");
    if (!cpu_supports(isa)) fail("LANCET_ISA=", v, ": this CPU does not support ", v);
    return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar:
            return "scalar";
        case Isa::Avx2:
            return "avx2";
        case Isa::Avx512:
            return "avx512";
        case Isa::Amx:
            return "amx";
    }
    return "?";
}

#if defined(__x86_64__)
namespace {

// CPU features read with cpuid and xgetbv directly: GCC's and clang's __builtin_cpu_supports know
// different feature names (clang 14 has no "f16c" or "avx512bf16"), and the OS must also have
// enabled the register state.
struct X86Features {
    bool avx2_fma_f16c = false;
    bool avx512 = false;  // F, BW, VL, DQ, VNNI and BF16
    bool amx = false;     // AMX-TILE, AMX-INT8 and AMX-BF16, OS state enabled and permitted
};

// Linux (5.16+) enables the 8 KiB tile data state only for processes that ask for it; without
// the permission the first tile instruction raises SIGILL. The permission is per process, so
// threads started before or after this call may use the tiles.
bool request_amx_permission() {
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM (asm/prctl.h)
    constexpr long kXfeatureXtiledata = 18;     // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}

X86Features detect_x86() {
    X86Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
               f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 0x6) != 0x6) return f;  // XMM and YMM state
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = b & (1u << 5);
    f.avx2_fma_f16c = avx2 && fma && f16c;
    const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
                        (b & (1u << 31)) && (c & (1u << 11));
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    const bool bf16 = a1 & (1u << 5);
    f.avx512 = f.avx2_fma_f16c && avx512 && bf16 && (xlo & 0xe0) == 0xe0;  // opmask, ZMM state
    // CPUID.(7,0):EDX bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8; XCR0 bits 17 (TILECFG) and 18
    // (TILEDATA) say the OS manages the tile state.
    const bool amx_cpu = (d & (1u << 22)) && (d & (1u << 24)) && (d & (1u << 25));
    const bool amx_os = (xlo & (3u << 17)) == (3u << 17);
    f.amx = f.avx512 && amx_cpu && amx_os && request_amx_permission();
    return f;
}

}  // namespace
#endif

bool cpu_supports(Isa isa) {
#if defined(__x86_64__)
    static const X86Features f = detect_x86();
    switch (isa) {
        case Isa::Scalar:
            return true;
        case Isa::Avx2:
            return f.avx2_fma_f16c;
        case Isa::Avx512:
            // The avx512 file is compiled with F/BW/VL/DQ/VNNI/BF16 enabled; require them all so
            // the compiler may use any of them.
            return f.avx512;
        case Isa::Amx:
            return f.amx;
    }
    return false;
#else
    return isa == Isa::Scalar;
#endif
}

Isa best_isa() {
    if (cpu_supports(Isa::Amx)) return Isa::Amx;
    if (cpu_supports(Isa::Avx512)) return Isa::Avx512;
    if (cpu_supports(Isa::Avx2)) return Isa::Avx2;
    return Isa::Scalar;
}

Isa active_isa() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_forced) return *g_forced;
    if (!g_env) g_env = parse_env();
    return *g_env;
}

void force_isa(Isa isa) {
    if (!cpu_supports(isa)) fail("ISA ", isa_name(isa), " is not supported by this CPU");
    std::lock_guard<std::mutex> lock(g_mutex);
    g_forced = isa;
}

void clear_forced_isa() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_forced.reset();
}

namespace detail {
// AVX-VNNI (CPUID.(7,1):EAX bit 4): VEX vpdpbusd on ymm. Only meaningful with the AVX2 tier (its
// registers are the YMM state cpu_supports(Avx2) already checked), so it is an option of that
// tier, read once, rather than an ISA of its own.
bool avx_vnni() {
#if defined(__x86_64__)
    static const bool has = [] {
        if (!cpu_supports(Isa::Avx2) || __get_cpuid_max(0, nullptr) < 7) return false;
        unsigned a, b, c, d;
        __cpuid_count(7, 1, a, b, c, d);
        return (a & (1u << 4)) != 0;
    }();
    return has;
#else
    return false;
#endif
}
}  // namespace detail

const char* act_mode_name(ActMode m) {
    switch (m) {
        case ActMode::Int8:
            return "int8";
        case ActMode::Bf16:
            return "bf16";
        case ActMode::Auto:
            return "auto";
        case ActMode::F32:
            break;
    }
    return "f32";
}

ActMode resolve_act_mode(ActMode m, Isa isa, size_t n) {
    if (m != ActMode::Auto) return m;
    return isa == Isa::Amx && n > detail::kGemvMaxRows ? ActMode::Bf16 : ActMode::Int8;
}

ActMode activation_mode() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_act_forced) return *g_act_forced;
    if (!g_act_env) g_act_env = parse_act_env();
    return *g_act_env;
}

void set_activation_mode(ActMode m) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_act_forced = m;
}

void clear_activation_mode() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_act_forced.reset();
}

const char* bf16_act_name(Bf16Act m) {
    switch (m) {
        case Bf16Act::Bf16:
            return "bf16";
        case Bf16Act::Auto:
            return "auto";
        case Bf16Act::F32:
            break;
    }
    return "f32";
}

Bf16Act resolve_bf16_act(Bf16Act m, Isa isa, size_t n) {
    if (m != Bf16Act::Auto) return m;
    return isa == Isa::Amx && n > detail::kGemvMaxRows ? Bf16Act::Bf16 : Bf16Act::F32;
}

Bf16Act bf16_activation_mode() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_bf16_act_forced) return *g_bf16_act_forced;
    if (!g_bf16_act_env) g_bf16_act_env = parse_bf16_act_env();
    return *g_bf16_act_env;
}

void set_bf16_activation_mode(Bf16Act m) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_bf16_act_forced = m;
}

void clear_bf16_activation_mode() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_bf16_act_forced.reset();
}

const char* attn_precision_name(AttnPrecision p) {
    switch (p) {
        case AttnPrecision::Bf16:
            return "bf16";
        case AttnPrecision::Auto:
            return "auto";
        case AttnPrecision::F32:
            break;
    }
    return "f32";
}

AttnPrecision attn_precision() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_attn_forced) return *g_attn_forced;
    if (!g_attn_env) g_attn_env = parse_attn_env();
    return *g_attn_env;
}

void set_attn_precision(AttnPrecision p) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_attn_forced = p;
}

void clear_attn_precision() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_attn_forced.reset();
}

std::string runtime_description(const ThreadPool& pool) {
    const Isa isa = active_isa();
    std::string s = "ISA ";
    switch (isa) {
        case Isa::Scalar:
            s += "scalar";
            break;
        case Isa::Avx2:
            s += detail::avx_vnni() ? "avx2+fma+avx-vnni" : "avx2+fma";
            break;
        case Isa::Avx512:
            s += "avx512 (f/bw/vl/dq/vnni/bf16)";
            break;
        case Isa::Amx:
            s += "avx512 (f/bw/vl/dq/vnni/bf16) + amx (tile/int8/bf16)";
            break;
    }
    s += ", " + std::to_string(pool.size()) + (pool.size() == 1 ? " thread" : " threads");
    if (activation_mode() == ActMode::Int8) s += ", int4 activations int8 (W4A8)";
    if (activation_mode() == ActMode::Auto)
        s += isa == Isa::Amx ? ", int4 activations auto (bf16 tiles above 8 rows, int8 below)"
                             : ", int4 activations auto (int8: no AMX)";
    if (activation_mode() == ActMode::Bf16)
        s += ", int4 activations bf16 (weights dequantized to bf16)";
    if (bf16_activation_mode() == Bf16Act::Bf16) s += ", bf16 activations for bf16 weights";
    if (bf16_activation_mode() == Bf16Act::Auto && isa == Isa::Amx)
        s += ", bf16 activations for bf16 weights on amx tiles above 8 rows";
    if (attn_precision() == AttnPrecision::Bf16)
        s += isa == Isa::Amx ? ", bf16 attention (amx tiles)" : ", bf16 attention";
    if (attn_precision() == AttnPrecision::Auto && isa == Isa::Amx)
        s += ", bf16 attention on amx tiles for >= 16 query rows";
    return s;
}

namespace detail {
float probe_read_avx2(const float* p, size_t n);
double probe_fma_avx2(size_t iters, float seed);
double probe_int8_avx2(size_t iters, int seed);
float probe_read_avx512(const float* p, size_t n);
double probe_fma_avx512(size_t iters, float seed);
double probe_int8_avx512(size_t iters, int seed);
double probe_bf16_avx512(size_t iters, float seed);
double probe_int8_amx(size_t iters, int seed);
double probe_bf16_amx(size_t iters, float seed);

namespace {
// Ops take the ISA from their OpContext; running one this CPU lacks would fault.
Isa checked(Isa isa) {
    if (!cpu_supports(isa)) fail("ISA ", isa_name(isa), " is not supported by this CPU");
    return isa;
}
// The kernel family below the AMX tiles: the Amx tier runs the Avx512 kernels for everything
// but the W4A8 GEMM.
Isa vector_isa(Isa isa) { return isa == Isa::Amx ? Isa::Avx512 : isa; }
}  // namespace

LinearFn linear_kernel(Isa isa) {
    switch (vector_isa(checked(isa))) {
        case Isa::Avx512:
            return &linear_avx512;
        case Isa::Avx2:
            return &linear_avx2;
        case Isa::Scalar:
        case Isa::Amx:
            break;
    }
    return &linear_scalar;
}

W4A8Fn w4a8_kernel(Isa isa) {
    switch (checked(isa)) {
        case Isa::Amx:
            return &w4a8_amx;
        case Isa::Avx512:
            return &w4a8_avx512;
        case Isa::Avx2:
            return avx_vnni() ? &w4a8_avxvnni : &w4a8_avx2;
        case Isa::Scalar:
            break;
    }
    return &w4a8_scalar;
}

// BF16 weights x bf16 activations: vdpbf16ps on AVX-512 (its file is built with -mavx512bf16 and
// cpu_supports(Avx512) requires BF16), TDPBF16PS tiles above kAmxBf16MinRows on Amx; the others
// round x and use linear_kernel.
Bf16DotFn bf16dot_kernel(Isa isa) {
    switch (checked(isa)) {
        case Isa::Amx:
            return &bf16dot_amx;
        case Isa::Avx512:
            return &bf16dot_avx512;
        case Isa::Avx2:
        case Isa::Scalar:
            break;
    }
    return nullptr;
}

// INT4 x bf16 activations (ActMode::Bf16) above the GEMV sizes: AMX tiles on Amx; elsewhere
// nullptr (q4_bf16_rows dequantizes blocks of outputs to bf16 for bf16dot_kernel or, without
// one, for linear_kernel).
Q4Bf16Fn q4bf16_kernel(Isa isa) { return checked(isa) == Isa::Amx ? &q4bf16_amx : nullptr; }

W4A8ManyFn w4a8_gemv_many_kernel(Isa isa) {
    switch (vector_isa(checked(isa))) {
        case Isa::Avx512:
            return &w4a8_gemv_many_avx512;
        case Isa::Avx2:
            return avx_vnni() ? &w4a8_gemv_many_avxvnni : &w4a8_gemv_many_avx2;
        case Isa::Scalar:
        case Isa::Amx:
            break;
    }
    return nullptr;
}

DequantBf16Fn dequant_bf16_kernel(Isa isa) {
    return checked(isa) == Isa::Scalar ? nullptr : &dequant_bf16_avx2;
}

// The op layer's row kernels. AVX-512 runs the AVX2 row ones (bound by memory, libm's exp/erf
// or the sequential norm sums, not by vector width) with its own query-block attention tiles.
const OpKernels& op_kernels(Isa isa) {
    switch (vector_isa(checked(isa))) {
        case Isa::Avx512:
            return op_kernels_avx512();
        case Isa::Avx2:
            return op_kernels_avx2();
        case Isa::Scalar:
        case Isa::Amx:
            break;
    }
    return op_kernels_scalar();
}

const AttnAmxKernels* attn_amx_kernels(Isa isa) {
    return checked(isa) == Isa::Amx ? &attn_amx_kernels_amx() : nullptr;
}

GemmFn gemm_nt_kernel(Isa isa) {
    return checked(isa) == Isa::Scalar ? &gemm_nt_portable : &gemm_nt_avx2;
}

GemmFn gemm_nn_kernel(Isa isa) {
    switch (vector_isa(checked(isa))) {
        case Isa::Avx512:
            return &gemm_nn_avx512;
        case Isa::Avx2:
            return &gemm_nn_avx2;
        case Isa::Scalar:
        case Isa::Amx:
            break;
    }
    return &gemm_nn_portable;
}

}  // namespace detail

namespace {
// The vector probes run on the active ISA's vector family (Amx: the AVX-512 ones).
Isa probe_isa() { return detail::vector_isa(active_isa()); }
}  // namespace

float probe_read(const float* p, size_t n) {
    if (probe_isa() == Isa::Avx512) return detail::probe_read_avx512(p, n);
    if (probe_isa() != Isa::Scalar) return detail::probe_read_avx2(p, n);
    float a[4] = {};
    for (size_t i = 0; i < n; i += 4)
        for (int j = 0; j < 4; ++j) a[j] += p[i + j];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

double probe_fma(size_t iters, float seed) {
    if (probe_isa() == Isa::Avx512) return detail::probe_fma_avx512(iters, seed);
    if (probe_isa() != Isa::Scalar) return detail::probe_fma_avx2(iters, seed);
    float acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = seed * float(c + 1);
    for (size_t i = 0; i < iters; ++i)
        for (int c = 0; c < 8; ++c) acc[c] = acc[c] * 0.999999f + 1e-7f;
    return double(iters) * 16 + 0.0 * double(acc[0] + acc[7]);
}

double probe_int8(size_t iters, int seed) {
    if (probe_isa() == Isa::Avx512) return detail::probe_int8_avx512(iters, seed);
    if (probe_isa() != Isa::Scalar) return detail::probe_int8_avx2(iters, seed);
    int32_t acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = seed + c;
    for (size_t i = 0; i < iters; ++i)
        for (int c = 0; c < 8; ++c) acc[c] = acc[c] * 3 + 1;
    return double(iters) * 16 + 0.0 * double(acc[0] + acc[7]);
}

double probe_bf16(size_t iters, float seed) {
    if (probe_isa() == Isa::Avx512) return detail::probe_bf16_avx512(iters, seed);
    return 0.0 * double(iters) * double(seed);
}

double probe_amx_int8(size_t iters, int seed) {
    if (active_isa() == Isa::Amx) return detail::probe_int8_amx(iters, seed);
    return 0.0 * double(iters) * double(seed);
}

double probe_amx_bf16(size_t iters, float seed) {
    if (active_isa() == Isa::Amx) return detail::probe_bf16_amx(iters, seed);
    return 0.0 * double(iters) * double(seed);
}

const char* probe_int8_name() {
    switch (probe_isa()) {
        case Isa::Avx512:
            return "vpdpbusd zmm";
        case Isa::Avx2:
            return detail::avx_vnni() ? "vpdpbusd ymm (AVX-VNNI)" : "2 vpmaddubsw + vpaddw ymm";
        case Isa::Scalar:
        case Isa::Amx:
            break;
    }
    return "scalar";
}

}  // namespace lancet::kernels
