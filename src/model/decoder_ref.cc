// The float64 reference decoder: straight-line loops over the spec's formulas.
#include "model/decoder_ref.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/numeric.h"
#include "model/lance_tensors.h"

namespace lancet::ref {

namespace {

std::vector<double> plain(const LanceCheckpoint& ck, const std::string& name) {
    const TensorView t = ck.tensor(name);
    std::vector<double> out(static_cast<size_t>(t.numel()));
    convert_to_f64(t, out.data());
    return out;
}

// y[o] = sum_i W[o,i] x[i] + b[o]
void matvec(const std::vector<double>& w, const double* b, const double* x, size_t out, size_t in,
            double* y) {
    for (size_t o = 0; o < out; ++o) {
        double s = b ? b[o] : 0.0;
        for (size_t i = 0; i < in; ++i) s += w[o * in + i] * x[i];
        y[o] = s;
    }
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

}  // namespace

void rms_norm(const double* x, size_t dim, const double* w, double eps, double* y) {
    double ss = 0;
    for (size_t i = 0; i < dim; ++i) ss += x[i] * x[i];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
    for (size_t i = 0; i < dim; ++i) y[i] = x[i] * r * w[i];
}

void mrope(double* x, size_t hd, const RopePosition& pos, const std::array<int, 3>& section,
           double theta) {
    const size_t half = hd / 2;
    std::vector<double> rotated(hd);
    for (size_t j = 0; j < half; ++j) {
        const int axis = static_cast<int>(j) < section[0]                ? 0
                         : static_cast<int>(j) < section[0] + section[1] ? 1
                                                                         : 2;
        const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(j) / hd);
        const double a = static_cast<double>(pos[axis]) * inv_freq;
        const double c = std::cos(a), s = std::sin(a);
        // x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1]; the angle repeats in both halves.
        rotated[j] = x[j] * c - x[j + half] * s;
        rotated[j + half] = x[j + half] * c + x[j] * s;
    }
    for (size_t i = 0; i < hd; ++i) x[i] = rotated[i];
}

std::vector<double> timestep_features(double t, int dim) {
    const int half = dim / 2;
    std::vector<double> f(static_cast<size_t>(dim));
    for (int k = 0; k < half; ++k) {
        const double freq = std::exp(-std::log(10000.0) * k / half);
        f[k] = std::cos(t * freq);
        f[half + k] = std::sin(t * freq);
    }
    return f;
}

std::vector<double> pe3d(int hidden, int64_t pos_id, int L) {
    const int d = (hidden / 3) / 2 * 2;
    const int widths[3] = {d, d, hidden - 2 * d};
    const int64_t coord[3] = {pos_id / (int64_t{L} * L), (pos_id / L) % L, pos_id % L};
    std::vector<double> row;
    for (int a = 0; a < 3; ++a) {
        const int half = widths[a] / 2;
        for (int k = 0; k < half; ++k)
            row.push_back(std::sin(coord[a] * std::pow(10000.0, -static_cast<double>(k) / half)));
        for (int k = 0; k < half; ++k)
            row.push_back(std::cos(coord[a] * std::pow(10000.0, -static_cast<double>(k) / half)));
    }
    return row;
}

std::vector<uint8_t> attention_mask(const std::vector<Split>& splits) {
    std::vector<int> split_of;
    for (size_t s = 0; s < splits.size(); ++s)
        for (int64_t i = 0; i < splits[s].len; ++i) split_of.push_back(static_cast<int>(s));
    const size_t L = split_of.size();
    std::vector<uint8_t> m(L * L);
    for (size_t q = 0; q < L; ++q)
        for (size_t k = 0; k < L; ++k) {
            const SplitMode mq = splits[split_of[q]].mode, mk = splits[split_of[k]].mode;
            const bool same = split_of[q] == split_of[k];
            const bool visible = k <= q || (same && mq != SplitMode::Causal);
            const bool peeks = mk == SplitMode::Noise && !same;
            m[q * L + k] = visible && !peeks;
        }
    return m;
}

void attention(const double* q, const double* k, const double* v, size_t L, size_t nh, size_t nkv,
               size_t hd, const std::vector<uint8_t>& mask, double* out) {
    const size_t group = nh / nkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    std::vector<double> p(L);
    for (size_t i = 0; i < L; ++i)
        for (size_t h = 0; h < nh; ++h) {
            const size_t g = h / group;
            const double* qi = q + (i * nh + h) * hd;
            double top = -std::numeric_limits<double>::infinity();
            for (size_t j = 0; j < L; ++j) {
                if (!mask[i * L + j]) continue;
                double s = 0;
                for (size_t d = 0; d < hd; ++d) s += qi[d] * k[(j * nkv + g) * hd + d];
                p[j] = s * scale;
                top = std::max(top, p[j]);
            }
            double sum = 0;
            for (size_t j = 0; j < L; ++j)
                if (mask[i * L + j]) sum += (p[j] = std::exp(p[j] - top));
            double* o = out + (i * nh + h) * hd;
            for (size_t d = 0; d < hd; ++d) o[d] = 0;
            for (size_t j = 0; j < L; ++j)
                if (mask[i * L + j])
                    for (size_t d = 0; d < hd; ++d) o[d] += p[j] / sum * v[(j * nkv + g) * hd + d];
        }
}

std::vector<RopePosition> rope_index(const std::vector<int64_t>& ids,
                                     const std::vector<std::array<int64_t, 3>>& latent_grids,
                                     const LanceConfig& cfg) {
    std::vector<RopePosition> pos;
    int64_t p = 0;
    size_t block = 0, i = 0;
    const int64_t step = cfg.vision.tokens_per_second;
    while (i < ids.size()) {
        const bool opens = ids[i] == cfg.vision_start_token_id && i + 1 < ids.size() &&
                           ids[i + 1] == cfg.video_token_id;
        pos.push_back({p, p, p});
        ++p, ++i;
        if (!opens) continue;
        if (block >= latent_grids.size()) fail("ref::rope_index: too few grids");
        const auto [t, h, w] = latent_grids[block++];
        int64_t top = 0;
        for (int64_t a = 0; a < t; ++a)
            for (int64_t b = 0; b < h; ++b)
                for (int64_t c = 0; c < w; ++c) {
                    pos.push_back({p + a * step, p + b, p + c});
                    top = std::max({top, p + a * step, p + b, p + c});
                }
        i += static_cast<size_t>(t * h * w);
        p = top + 1;
    }
    if (pos.size() != ids.size()) fail("ref::rope_index: a block runs past the end");
    return pos;
}

std::vector<double> linear_weight(const LanceCheckpoint& ck, const std::string& base) {
    if (!ck.is_quantized(base)) return plain(ck, base + ".weight");
    const QuantizedLinearView q = ck.quantized(base);
    const size_t out = q.out, in = q.in, gs = q.group_size, ng = in / gs;
    std::vector<double> scales(out * ng);
    convert_to_f64(q.scales, scales.data());
    std::vector<double> w(out * in);
    // The spec's decode rules (awq-checkpoint-format.md §1.1-1.3), one weight at a time.
    for (size_t o = 0; o < out; ++o)
        for (size_t i = 0; i < in; ++i) {
            const double s = scales[o * ng + i / gs];
            switch (q.format) {
                case QuantFormat::Int4: {
                    const uint8_t byte = q.qweight.data[o * (in / 2) + i / 2];
                    const int code = (i % 2) ? byte >> 4 : byte & 15;
                    w[o * in + i] = (code - q.zeros.data[o * ng + i / gs]) * s;
                    break;
                }
                case QuantFormat::Int5:
                    w[o * in + i] =
                        (int(q.qweight.data[o * in + i]) - q.zeros.data[o * ng + i / gs]) * s;
                    break;
                case QuantFormat::Nvfp4: {
                    static const double kMagnitude[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
                    const uint8_t byte = q.qweight.data[o * (in / 2) + i / 2];
                    const int code = (i % 2) ? byte >> 4 : byte & 15;
                    w[o * in + i] = (code & 8 ? -1.0 : 1.0) * kMagnitude[code & 7] * s;
                    break;
                }
            }
        }
    return w;
}

Output forward(const LanceCheckpoint& ck, const Input& in, int64_t logits_limit) {
    const LanceConfig& c = ck.config();
    const size_t L = in.token_ids.size(), H = c.hidden_size, nh = c.num_attention_heads,
                 nkv = c.num_key_value_heads, hd = c.head_dim(), I = c.intermediate_size,
                 C = c.latent_channels, V = c.vocab_size;
    const double eps = c.rms_norm_eps;
    if (logits_limit <= 0) logits_limit = c.vocab_size;
    auto gen = [&](size_t r) { return !in.is_gen.empty() && in.is_gen[r]; };

    // Embeddings.
    std::vector<double> x(L * H);
    {
        const auto embed = plain(ck, lance_names::kEmbedTokens);
        const auto w_in = plain(ck, lance_names::weight(lance_names::kVae2Llm)),
                   b_in = plain(ck, lance_names::bias(lance_names::kVae2Llm));
        const auto t0w = plain(ck, lance_names::weight(lance_names::kTimeMlp0)),
                   t0b = plain(ck, lance_names::bias(lance_names::kTimeMlp0)),
                   t2w = plain(ck, lance_names::weight(lance_names::kTimeMlp2)),
                   t2b = plain(ck, lance_names::bias(lance_names::kTimeMlp2));
        size_t g = 0;
        std::vector<double> a(H), b(H);
        for (size_t r = 0; r < L; ++r) {
            double* xr = &x[r * H];
            if (!gen(r)) {
                for (size_t i = 0; i < H; ++i) xr[i] = embed[in.token_ids[r] * H + i];
                continue;
            }
            matvec(w_in, b_in.data(), &in.latents[g * C], H, C, xr);
            const auto f = timestep_features(in.timesteps[g], c.time_freq_dim);
            matvec(t0w, t0b.data(), f.data(), H, c.time_freq_dim, a.data());
            for (double& v : a) v = silu(v);
            matvec(t2w, t2b.data(), a.data(), H, H, b.data());
            const auto pe = pe3d(c.hidden_size, in.pe3d_index[g], c.max_latent_size);
            for (size_t i = 0; i < H; ++i) xr[i] += b[i] + pe[i];
            ++g;
        }
    }

    const auto mask = attention_mask(in.splits);
    Output out;
    std::vector<double> h(H), q(L * nh * hd), k(L * nkv * hd), v(L * nkv * hd), att(L * nh * hd),
        o(H), gate(I), up(I);
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
        struct Path {
            std::vector<double> ln, post, wq, bq, wk, bk, wv, bv, wo, qn, kn, wg, wu, wd;
        } paths[2];
        for (int p = 0; p < 2; ++p) {
            const PathNames n = path_names(layer, p == 1);
            Path& P = paths[p];
            P.ln = plain(ck, n.input_norm);
            P.post = plain(ck, n.post_norm);
            P.wq = linear_weight(ck, n[PathLinear::Q]);
            P.bq = plain(ck, n.bias(PathLinear::Q));
            P.wk = linear_weight(ck, n[PathLinear::K]);
            P.bk = plain(ck, n.bias(PathLinear::K));
            P.wv = linear_weight(ck, n[PathLinear::V]);
            P.bv = plain(ck, n.bias(PathLinear::V));
            P.wo = linear_weight(ck, n[PathLinear::O]);
            P.qn = plain(ck, n.q_norm);
            P.kn = plain(ck, n.k_norm);
            P.wg = linear_weight(ck, n[PathLinear::Gate]);
            P.wu = linear_weight(ck, n[PathLinear::Up]);
            P.wd = linear_weight(ck, n[PathLinear::Down]);
        }
        for (size_t r = 0; r < L; ++r) {
            const Path& P = paths[gen(r)];
            rms_norm(&x[r * H], H, P.ln.data(), eps, h.data());
            matvec(P.wq, P.bq.data(), h.data(), nh * hd, H, &q[r * nh * hd]);
            matvec(P.wk, P.bk.data(), h.data(), nkv * hd, H, &k[r * nkv * hd]);
            matvec(P.wv, P.bv.data(), h.data(), nkv * hd, H, &v[r * nkv * hd]);
            for (size_t j = 0; j < nh; ++j) {
                double* qh = &q[(r * nh + j) * hd];
                rms_norm(qh, hd, P.qn.data(), eps, qh);
                mrope(qh, hd, in.positions[r], c.mrope_section, c.rope_theta);
            }
            for (size_t j = 0; j < nkv; ++j) {
                double* kh = &k[(r * nkv + j) * hd];
                rms_norm(kh, hd, P.kn.data(), eps, kh);
                mrope(kh, hd, in.positions[r], c.mrope_section, c.rope_theta);
            }
        }
        attention(q.data(), k.data(), v.data(), L, nh, nkv, hd, mask, att.data());
        for (size_t r = 0; r < L; ++r) {
            const Path& P = paths[gen(r)];
            double* xr = &x[r * H];
            matvec(P.wo, nullptr, &att[r * nh * hd], H, nh * hd, o.data());
            for (size_t i = 0; i < H; ++i) xr[i] += o[i];
            rms_norm(xr, H, P.post.data(), eps, h.data());
            matvec(P.wg, nullptr, h.data(), I, H, gate.data());
            matvec(P.wu, nullptr, h.data(), I, H, up.data());
            for (size_t i = 0; i < I; ++i) gate[i] = silu(gate[i]) * up[i];
            matvec(P.wd, nullptr, gate.data(), H, I, o.data());
            for (size_t i = 0; i < H; ++i) xr[i] += o[i];
        }
        out.layer_out.push_back(x);
    }

    const auto norm_und = plain(ck, lance_names::kNorm),
               norm_gen = plain(ck, lance_names::kNormGen);
    const auto head = plain(ck, lance_names::weight(lance_names::kLmHead));
    const auto w_out = plain(ck, lance_names::weight(lance_names::kLlm2Vae)),
               b_out = plain(ck, lance_names::bias(lance_names::kLlm2Vae));
    out.final_hidden.resize(L * H);
    for (size_t r = 0; r < L; ++r) {
        double* f = &out.final_hidden[r * H];
        rms_norm(&x[r * H], H, gen(r) ? norm_gen.data() : norm_und.data(), eps, f);
        if (gen(r)) {
            const size_t at = out.velocity.size();
            out.velocity.resize(at + C);
            matvec(w_out, b_out.data(), f, C, H, &out.velocity[at]);
        } else {
            const size_t at = out.logits.size();
            out.logits.resize(at + V);
            matvec(head, nullptr, f, V, H, &out.logits[at]);
            for (size_t t = static_cast<size_t>(logits_limit); t < V; ++t)
                out.logits[at + t] = -std::numeric_limits<double>::infinity();
        }
    }
    return out;
}

}  // namespace lancet::ref
