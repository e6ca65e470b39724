// The op layer's drivers: shape and stride checks, threading, and the per-ISA row kernels
// (ops_kernels.h) picked by dispatch.cc from OpContext::isa. Attention and conv3d have their own
// files.
#include "kernels/ops.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/linear_kernels.h"
#include "kernels/ops_kernels.h"

namespace lancet::kernels {

// ---- TensorRef / OpContext -------------------------------------------------------------------

namespace {

TensorRef make_contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape) {
    TensorRef t;
    t.dtype = dtype;
    t.data = data;
    if (shape.size() > static_cast<size_t>(kMaxDims))
        fail("TensorRef: ", shape.size(), " dimensions (at most ", kMaxDims, ")");
    t.ndim = static_cast<int>(shape.size());
    int d = 0;
    for (int64_t s : shape) t.shape[d++] = s;
    int64_t st = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
        t.stride[i] = st;
        st *= t.shape[i];
    }
    return t;
}

}  // namespace

TensorRef TensorRef::contiguous(float* data, std::initializer_list<int64_t> shape) {
    return make_contiguous(data, DType::F32, shape);
}
TensorRef TensorRef::contiguous(const float* data, std::initializer_list<int64_t> shape) {
    // Views are non-owning and used read-only where the op says x is an input.
    return make_contiguous(const_cast<float*>(data), DType::F32, shape);
}
TensorRef TensorRef::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape) {
    return make_contiguous(data, dtype, shape);
}
TensorRef TensorRef::matrix(const float* data, size_t rows, size_t cols) {
    return contiguous(data, {static_cast<int64_t>(rows), static_cast<int64_t>(cols)});
}

int64_t TensorRef::numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
}

bool TensorRef::is_contiguous() const {
    int64_t st = 1;
    for (int d = ndim - 1; d >= 0; --d) {
        if (shape[d] != 1 && stride[d] != st) return false;
        st *= shape[d];
    }
    return true;
}

TensorRef TensorRef::slice(int d, int64_t begin, int64_t end) const {
    if (d < 0 || d >= ndim || begin < 0 || end < begin || end > shape[d])
        fail("TensorRef::slice: [", begin, ", ", end, ") of dimension ", d, " of ", describe());
    TensorRef t = *this;
    t.shape[d] = end - begin;
    t.data = static_cast<char*>(data) + begin * stride[d] * static_cast<int64_t>(dtype_size(dtype));
    return t;
}

std::string TensorRef::describe() const {
    std::string s = "[";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    s += "] ";
    for (char c : dtype_name(dtype)) s += static_cast<char>(std::tolower(c));
    return s;
}

OpContext OpContext::defaults(ThreadPool* pool) {
    OpContext c;
    c.pool = pool ? pool : &default_pool();
    c.isa = active_isa();
    c.act = activation_mode();
    c.bf16_act = bf16_activation_mode();
    c.attn = attn_precision();
    return c;
}

namespace {

const detail::OpKernels& kern(const OpContext& ctx) { return detail::op_kernels(ctx.isa); }

void check_f32(const TensorRef& t, const char* op, const char* name) {
    if (t.dtype != DType::F32 || t.device != Device::Cpu || !t.data)
        fail(op, ": ", name, " must be an f32 cpu tensor, got ", t.describe());
    if (t.ndim < 1) fail(op, ": ", name, " has no dimensions");
    if (t.stride[t.ndim - 1] != 1 && t.shape[t.ndim - 1] != 1)
        fail(op, ": ", name, " ", t.describe(), " needs a unit stride in its last dimension");
}

void check_same_shape(const TensorRef& a, const TensorRef& b, const char* op) {
    bool same = a.ndim == b.ndim;
    for (int d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
    if (!same) fail(op, ": shapes ", a.describe(), " and ", b.describe(), " differ");
}

// Element offset of row r of t (rows: every dimension but the last, row-major over `shape`,
// which is t's shape or a shape t broadcasts to: dimensions of size 1 in t repeat).
int64_t row_offset(const TensorRef& t, const std::array<int64_t, kMaxDims>& shape, int ndim,
                   int64_t r) {
    int64_t off = 0;
    for (int d = ndim - 2; d >= 0; --d) {
        const int64_t i = r % shape[d];
        r /= shape[d];
        if (t.shape[d] != 1) off += i * t.stride[d];
    }
    return off;
}

int64_t rows_of(const TensorRef& t) {
    return t.ndim && t.shape[t.ndim - 1] ? t.numel() / t.shape[t.ndim - 1] : 0;
}

// Elementwise work below this many elements runs on the calling thread.
constexpr int64_t kSerialElems = 1 << 14;

// fn(row index r0..r1) over the rows of y, threaded when the work is large.
template <typename F>
void for_rows(const OpContext& ctx, int64_t rows, int64_t row_len, F&& fn) {
    if (rows * row_len < kSerialElems || ctx.threads().size() == 1) {
        if (rows > 0) fn(int64_t{0}, rows);
        return;
    }
    ctx.threads().parallel_for(static_cast<size_t>(rows), [&](size_t r0, size_t r1) {
        fn(static_cast<int64_t>(r0), static_cast<int64_t>(r1));
    });
}

// Elementwise op over tensors of y's shape with unit inner stride: one flat span when all are
// contiguous (split in pieces across threads), else row by row. fn(offsets..., count).
template <size_t N, typename F>
void elementwise(const OpContext& ctx, const std::array<const TensorRef*, N>& in,
                 const TensorRef& y, F&& fn) {
    bool flat = y.is_contiguous();
    for (const TensorRef* t : in) flat = flat && t->is_contiguous();
    const int64_t n = y.numel();
    if (flat) {
        constexpr int64_t kPiece = 4096;
        const int64_t pieces = (n + kPiece - 1) / kPiece;
        auto run = [&](int64_t p0, int64_t p1) {
            const int64_t b = p0 * kPiece, e = std::min(n, p1 * kPiece);
            std::array<const float*, N> src;
            for (size_t i = 0; i < N; ++i) src[i] = in[i]->f32() + b;
            fn(src, y.f32() + b, e - b);
        };
        for_rows(ctx, pieces, kPiece, run);
        return;
    }
    const int64_t len = y.shape[y.ndim - 1];
    for_rows(ctx, rows_of(y), len, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            std::array<const float*, N> src;
            for (size_t i = 0; i < N; ++i)
                src[i] = in[i]->f32() + row_offset(*in[i], y.shape, y.ndim, r);
            fn(src, y.f32() + row_offset(y, y.shape, y.ndim, r), len);
        }
    });
}

}  // namespace

// ---- dense algebra ---------------------------------------------------------------------------

namespace detail {

namespace {
std::atomic<bool> g_linear_timing{false};
std::atomic<int64_t> g_linear_ns{0};

void linear_rows_untimed(const OpContext& ctx, const float* x, size_t n, const LinearWeight& w,
                         const float* bias, float* y) {
    ThreadPool& pool = ctx.threads();
    const ActMode act = resolve_act_mode(ctx.act, ctx.isa, n);
    if (w.type() == WeightType::Q4 && act == ActMode::Int8) {
        w4a8_rows(ctx.isa, x, n, w, bias, y, pool);
        return;
    }
    if (w.type() == WeightType::Q4 && act == ActMode::Bf16) {
        q4_bf16_rows(ctx.isa, x, n, w, bias, y, pool);
        return;
    }
    if (w.type() == WeightType::BF16 &&
        resolve_bf16_act(ctx.bf16_act, ctx.isa, n) == Bf16Act::Bf16) {
        bf16_rows(ctx.isa, x, n, w, bias, y, pool);
        return;
    }
    const PackedView p = w.packed();
    thread_local std::vector<float> scratch;
    const size_t need = scratch_floats(n, p);
    if (scratch.size() < need) scratch.resize(need);
    linear_kernel(ctx.isa)(x, n, p, bias, y, scratch.data(), pool);
}
}  // namespace

// Runs f, adding its wall time to linear_seconds() while timing is on.
template <typename F>
void timed_linear(F&& f) {
    if (!g_linear_timing.load(std::memory_order_relaxed)) {
        f();
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    f();
    g_linear_ns.fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
            .count(),
        std::memory_order_relaxed);
}

void linear_rows(const OpContext& ctx, const float* x, size_t n, const LinearWeight& w,
                 const float* bias, float* y) {
    if (n == 0) return;
    timed_linear([&] { linear_rows_untimed(ctx, x, n, w, bias, y); });
}

}  // namespace detail

void set_linear_timing(bool on) { detail::g_linear_timing.store(on); }
double linear_seconds() { return double(detail::g_linear_ns.load()) * 1e-9; }
void reset_linear_seconds() { detail::g_linear_ns.store(0); }

void linear(const OpContext& ctx, const TensorRef& x, const LinearWeight& w, const float* bias,
            const TensorRef& y) {
    check_f32(x, "linear", "x");
    check_f32(y, "linear", "y");
    if (x.ndim != 2 || y.ndim != 2 || x.shape[1] != static_cast<int64_t>(w.in()) ||
        y.shape[1] != static_cast<int64_t>(w.out()) || x.shape[0] != y.shape[0])
        fail("linear: x ", x.describe(), " and y ", y.describe(), " do not fit a weight [", w.out(),
             ", ", w.in(), "]");
    const size_t n = static_cast<size_t>(x.shape[0]), in = w.in(), out = w.out();
    if (n == 0) return;
    // The kernels take dense rows; strided rows go through a copy.
    thread_local std::vector<float> xbuf, ybuf;
    const float* xp = x.f32();
    if (n > 1 && x.stride[0] != static_cast<int64_t>(in)) {
        xbuf.resize(n * in);
        for (size_t r = 0; r < n; ++r) std::memcpy(&xbuf[r * in], xp + r * x.stride[0], in * 4);
        xp = xbuf.data();
    }
    const bool y_dense = n == 1 || y.stride[0] == static_cast<int64_t>(out);
    if (!y_dense) ybuf.resize(n * out);
    float* yp = y_dense ? y.f32() : ybuf.data();
    detail::linear_rows(ctx, xp, n, w, bias, yp);
    if (!y_dense)
        for (size_t r = 0; r < n; ++r)
            std::memcpy(y.f32() + r * y.stride[0], &ybuf[r * out], out * 4);
}

void linear_same_input(const OpContext& ctx, const float* x, size_t n, const LinearOut* outs,
                       size_t count) {
    if (n == 0 || count == 0) return;
    const size_t in = outs[0].w->in();
    bool fused = resolve_act_mode(ctx.act, ctx.isa, n) == ActMode::Int8 &&
                 n <= detail::kGemvMaxRows && count <= detail::kW4A8MaxOuts &&
                 detail::w4a8_gemv_many_kernel(ctx.isa);
    for (size_t k = 0; k < count; ++k) {
        const LinearWeight& w = *outs[k].w;
        if (w.in() != in)
            fail("linear_same_input: weight ", k, " takes ", w.in(), " inputs, weight 0 ", in);
        fused = fused && w.type() == WeightType::Q4 && w.group_size() == outs[0].w->group_size();
    }
    if (!fused) {
        for (size_t k = 0; k < count; ++k)
            detail::linear_rows(ctx, x, n, *outs[k].w, outs[k].bias, outs[k].y);
        return;
    }
    detail::W4A8Out o[detail::kW4A8MaxOuts];
    for (size_t k = 0; k < count; ++k) o[k] = {outs[k].w->packed(), outs[k].bias, outs[k].y};
    const detail::W4A8Scratch s = detail::w4a8_scratch(n, in, outs[0].w->group_size());
    detail::timed_linear(
        [&] { detail::w4a8_gemv_many_kernel(ctx.isa)(x, n, o, count, s, ctx.threads()); });
}

// ---- elementwise and row ops -----------------------------------------------------------------

void rms_norm(const OpContext& ctx, const TensorRef& x, const float* w, float eps,
              const TensorRef& y) {
    check_f32(x, "rms_norm", "x");
    check_f32(y, "rms_norm", "y");
    check_same_shape(x, y, "rms_norm");
    const auto row = kern(ctx).rms_norm_row;
    const int64_t dim = x.shape[x.ndim - 1];
    for_rows(ctx, rows_of(x), dim, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
            row(x.f32() + row_offset(x, x.shape, x.ndim, r), static_cast<size_t>(dim), w, eps,
                y.f32() + row_offset(y, y.shape, y.ndim, r));
    });
}

void channel_rms_norm(const OpContext& ctx, const TensorRef& x, int dim, const float* gamma,
                      const float* bias, const TensorRef& y) {
    check_f32(x, "channel_rms_norm", "x");
    check_f32(y, "channel_rms_norm", "y");
    check_same_shape(x, y, "channel_rms_norm");
    if (dim < 0 || dim >= x.ndim) fail("channel_rms_norm: dimension ", dim, " of ", x.describe());
    if (!gamma) fail("channel_rms_norm: gamma missing");
    if (dim == x.ndim - 1) {
        const auto row = kern(ctx).channel_rms_norm_row;
        const int64_t c = x.shape[dim];
        for_rows(ctx, rows_of(x), c, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r)
                row(x.f32() + row_offset(x, x.shape, x.ndim, r), static_cast<size_t>(c), gamma,
                    bias, y.f32() + row_offset(y, y.shape, y.ndim, r));
        });
        return;
    }
    // Channels not innermost (channels-first callers): the same arithmetic on strided channels.
    TensorRef xm = x, ym = y;  // x and y with `dim` moved last
    for (int d = dim; d < x.ndim - 1; ++d) {
        std::swap(xm.shape[d], xm.shape[d + 1]);
        std::swap(xm.stride[d], xm.stride[d + 1]);
        std::swap(ym.shape[d], ym.shape[d + 1]);
        std::swap(ym.stride[d], ym.stride[d + 1]);
    }
    const int64_t c = x.shape[dim], xs = xm.stride[x.ndim - 1], ys = ym.stride[x.ndim - 1];
    for_rows(ctx, rows_of(xm), c, [&](int64_t r0, int64_t r1) {
        std::vector<float> in(c), out(c);
        for (int64_t r = r0; r < r1; ++r) {
            const float* src = xm.f32() + row_offset(xm, xm.shape, xm.ndim, r);
            float* dst = ym.f32() + row_offset(ym, ym.shape, ym.ndim, r);
            for (int64_t i = 0; i < c; ++i) in[i] = src[i * xs];
            kern(ctx).channel_rms_norm_row(in.data(), static_cast<size_t>(c), gamma, bias,
                                           out.data());
            for (int64_t i = 0; i < c; ++i) dst[i * ys] = out[i];
        }
    });
}

void silu_mul(const OpContext& ctx, const TensorRef& gate, const TensorRef& up,
              const TensorRef& y) {
    check_f32(gate, "silu_mul", "gate");
    check_f32(up, "silu_mul", "up");
    check_f32(y, "silu_mul", "y");
    check_same_shape(gate, y, "silu_mul");
    check_same_shape(up, y, "silu_mul");
    const auto fn = kern(ctx).silu_mul;
    elementwise<2>(ctx, {&gate, &up}, y,
                   [&](const std::array<const float*, 2>& s, float* d, int64_t n) {
                       fn(s[0], s[1], static_cast<size_t>(n), d);
                   });
}

void silu(const OpContext& ctx, const TensorRef& x, const TensorRef& y) {
    check_f32(x, "silu", "x");
    check_f32(y, "silu", "y");
    check_same_shape(x, y, "silu");
    const auto fn = kern(ctx).silu;
    elementwise<1>(ctx, {&x}, y, [&](const std::array<const float*, 1>& s, float* d, int64_t n) {
        fn(s[0], static_cast<size_t>(n), d);
    });
}

void gelu(const OpContext& ctx, const TensorRef& x, const TensorRef& y) {
    check_f32(x, "gelu", "x");
    check_f32(y, "gelu", "y");
    check_same_shape(x, y, "gelu");
    const auto fn = kern(ctx).gelu;
    elementwise<1>(ctx, {&x}, y, [&](const std::array<const float*, 1>& s, float* d, int64_t n) {
        fn(s[0], static_cast<size_t>(n), d);
    });
}

void add(const OpContext& ctx, const TensorRef& a, const TensorRef& b_in, const TensorRef& y) {
    check_f32(a, "add", "a");
    check_f32(b_in, "add", "b");
    check_f32(y, "add", "y");
    check_same_shape(a, y, "add");
    if (b_in.ndim > y.ndim) fail("add: b ", b_in.describe(), " has more dimensions than y");
    // b with fewer dimensions is aligned to y's last ones (a bias [C] over [T, H, W, C]).
    TensorRef b = b_in;
    const int lead = y.ndim - b_in.ndim;
    b.ndim = y.ndim;
    for (int d = y.ndim - 1; d >= 0; --d) {
        b.shape[d] = d >= lead ? b_in.shape[d - lead] : 1;
        b.stride[d] = d >= lead ? b_in.stride[d - lead] : 0;
    }
    bool fits = true;
    for (int d = 0; fits && d < y.ndim; ++d) fits = b.shape[d] == y.shape[d] || b.shape[d] == 1;
    if (!fits) fail("add: b ", b.describe(), " does not broadcast to ", y.describe());
    const int64_t len = y.shape[y.ndim - 1];
    if (b.shape[b.ndim - 1] == 1 && len != 1) {
        // One b value per row: a plain loop (an f32 add rounds the same on every ISA).
        for_rows(ctx, rows_of(y), len, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                const float* ar = a.f32() + row_offset(a, y.shape, y.ndim, r);
                const float bv = b.f32()[row_offset(b, y.shape, y.ndim, r)];
                float* yr = y.f32() + row_offset(y, y.shape, y.ndim, r);
                for (int64_t i = 0; i < len; ++i) yr[i] = ar[i] + bv;
            }
        });
        return;
    }
    const auto fn = kern(ctx).add;
    bool b_full = true;
    for (int d = 0; d < y.ndim; ++d) b_full = b_full && b.shape[d] == y.shape[d];
    if (b_full) {
        elementwise<2>(ctx, {&a, &b}, y,
                       [&](const std::array<const float*, 2>& s, float* d, int64_t n) {
                           fn(s[0], s[1], static_cast<size_t>(n), d);
                       });
        return;
    }
    for_rows(ctx, rows_of(y), len, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
            fn(a.f32() + row_offset(a, y.shape, y.ndim, r),
               b.f32() + row_offset(b, y.shape, y.ndim, r), static_cast<size_t>(len),
               y.f32() + row_offset(y, y.shape, y.ndim, r));
    });
}

// ---- rotary position embedding ---------------------------------------------------------------

namespace {
void rope_table_init(RopeTable& t, size_t n, size_t hd) {
    if (hd == 0 || hd % 2 != 0) fail("rope: head dim ", hd, " must be even");
    t.n = n;
    t.half = hd / 2;
    t.cos.resize(n * t.half);
    t.sin.resize(n * t.half);
}
void rope_set(RopeTable& t, size_t r, size_t j, double a) {
    t.cos[r * t.half + j] = static_cast<float>(std::cos(a));
    t.sin[r * t.half + j] = static_cast<float>(std::sin(a));
}
}  // namespace

void rope_angles_1d(const int64_t* pos, size_t n, size_t hd, double theta, RopeTable& t) {
    rope_table_init(t, n, hd);
    for (size_t r = 0; r < n; ++r)
        for (size_t j = 0; j < t.half; ++j)
            rope_set(t, r, j,
                     static_cast<double>(pos[r]) *
                         std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(hd)));
}

void rope_angles_mrope(const std::array<int64_t, 3>* pos, size_t n, size_t hd,
                       const std::array<int, 3>& section, double theta, RopeTable& t) {
    rope_table_init(t, n, hd);
    if (section[0] < 0 || section[1] < 0 || section[2] < 0 ||
        static_cast<size_t>(section[0] + section[1] + section[2]) != t.half)
        fail("rope_angles_mrope: sections ", section[0], "+", section[1], "+", section[2],
             " do not sum to hd/2 = ", t.half);
    for (size_t r = 0; r < n; ++r)
        for (size_t j = 0; j < t.half; ++j) {
            const int jj = static_cast<int>(j);
            const int axis = jj < section[0] ? 0 : jj < section[0] + section[1] ? 1 : 2;
            rope_set(t, r, j,
                     static_cast<double>(pos[r][axis]) *
                         std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(hd)));
        }
}

void rope_angles_2d(const std::array<int64_t, 2>* pos, size_t n, size_t hd, double theta,
                    RopeTable& t) {
    rope_table_init(t, n, hd);
    if (hd % 4 != 0) fail("rope_angles_2d: head dim ", hd, " must be a multiple of 4");
    const size_t q = hd / 4;
    for (size_t r = 0; r < n; ++r)
        for (size_t j = 0; j < t.half; ++j) {
            const size_t i = j % q;
            rope_set(t, r, j,
                     static_cast<double>(pos[r][j / q]) *
                         std::pow(theta, -4.0 * static_cast<double>(i) / static_cast<double>(hd)));
        }
}

void rope(const OpContext& ctx, const TensorRef& x, const RopeTable& t) {
    check_f32(x, "rope", "x");
    if (x.ndim != 3 || static_cast<size_t>(x.shape[0]) != t.n ||
        static_cast<size_t>(x.shape[2]) != 2 * t.half)
        fail("rope: x ", x.describe(), " does not fit a table of ", t.n, " rows, hd ", 2 * t.half);
    const auto row = kern(ctx).rope_row;
    const int64_t heads = x.shape[1], hd = x.shape[2];
    const bool packed = heads == 1 || x.stride[1] == hd;
    for_rows(ctx, x.shape[0], heads * hd, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const float* c = &t.cos[r * t.half];
            const float* s = &t.sin[r * t.half];
            float* xr = x.f32() + r * x.stride[0];
            if (packed)
                row(xr, static_cast<size_t>(heads), static_cast<size_t>(hd), c, s);
            else
                for (int64_t h = 0; h < heads; ++h)
                    row(xr + h * x.stride[1], 1, static_cast<size_t>(hd), c, s);
        }
    });
}

// ---- resampling ------------------------------------------------------------------------------

void upsample_nearest2x(const OpContext& ctx, const TensorRef& x, const TensorRef& y) {
    check_f32(x, "upsample_nearest2x", "x");
    check_f32(y, "upsample_nearest2x", "y");
    if (x.ndim != 4 || y.ndim != 4 || y.shape[0] != x.shape[0] || y.shape[1] != 2 * x.shape[1] ||
        y.shape[2] != 2 * x.shape[2] || y.shape[3] != x.shape[3])
        fail("upsample_nearest2x: y ", y.describe(), " is not x ", x.describe(),
             " doubled in space");
    const int64_t T = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3];
    for_rows(ctx, T * H, 4 * W * C, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t t = r / H, h = r % H;
            const float* src = x.f32() + t * x.stride[0] + h * x.stride[1];
            for (int64_t dy = 0; dy < 2; ++dy) {
                float* dst = y.f32() + t * y.stride[0] + (2 * h + dy) * y.stride[1];
                for (int64_t w = 0; w < W; ++w)
                    for (int64_t dx = 0; dx < 2; ++dx)
                        std::memcpy(dst + (2 * w + dx) * y.stride[2], src + w * x.stride[2],
                                    C * sizeof(float));
            }
        }
    });
}

}  // namespace lancet::kernels
