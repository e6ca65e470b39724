// The flow sampler: cached prefix, noisy-block steps, CFG and Euler (spec §3.1, §2.7.1).
#include "pipeline/flow_sampler.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/numeric.h"
#include "core/rng.h"

namespace lancet {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

float bf(float x, bool on) { return on ? round_bf16(x) : x; }

// The tokens of `b` whose keep[i] is set, with their gen rows (latents of C channels; timesteps
// when b has them), splits (shortened, empty ones dropped) and positions `pos` (same length as b).
Batch select_rows(const Batch& b, const std::vector<uint8_t>& keep,
                  const std::vector<RopePosition>& pos, size_t C) {
    Batch s;
    size_t g = 0;
    for (size_t i = 0; i < b.size(); ++i) {
        const bool gen = b.is_gen[i] != 0;
        if (keep[i]) {
            s.token_ids.push_back(b.token_ids[i]);
            s.is_gen.push_back(b.is_gen[i]);
            s.positions.push_back(pos[i]);
            if (gen) {
                s.latents.insert(s.latents.end(), b.latents.begin() + g * C,
                                 b.latents.begin() + (g + 1) * C);
                if (!b.timesteps.empty()) s.timesteps.push_back(b.timesteps[g]);
                s.pe3d_index.push_back(b.pe3d_index[g]);
            }
        }
        g += gen;
    }
    size_t at = 0;
    for (const Split& sp : b.splits) {
        int64_t len = 0;
        for (int64_t k = 0; k < sp.len; ++k) len += keep[at + k] != 0;
        if (len > 0) s.splits.push_back({len, sp.mode});
        at += sp.len;
    }
    return s;
}

// Input embeddings of `b` [n, hidden]: embed_tokens rows, the latent embedding on gen rows, and
// ViT rows in order on und <|video_pad|> rows.
void embed_with_vit(DecoderSession& dec, const Batch& b, const std::vector<float>& vit_rows,
                    std::vector<float>& out) {
    const LanceConfig& cfg = dec.config();
    const size_t H = cfg.hidden_size, n = b.size();
    out.resize(n * H);
    dec.embed_tokens(b.token_ids.data(), n, out.data());
    const size_t n_gen = b.timesteps.size();
    std::vector<float> gen(n_gen * H);
    if (n_gen)
        dec.embed_latents(b.latents.data(), b.timesteps.data(), b.pe3d_index.data(), n_gen,
                          gen.data());
    size_t g = 0, k = 0;
    for (size_t i = 0; i < n; ++i) {
        const float* src = nullptr;
        if (b.is_gen[i])
            src = &gen[(g++) * H];
        else if (b.token_ids[i] == cfg.video_token_id)
            src = &vit_rows[(k++) * H];
        if (src) std::copy_n(src, H, &out[i * H]);
    }
}

size_t count_vit_pads(const Batch& b, const LanceConfig& cfg) {
    size_t n = 0;
    for (size_t i = 0; i < b.size(); ++i) n += !b.is_gen[i] && b.token_ids[i] == cfg.video_token_id;
    return n;
}

}  // namespace

std::vector<RopePosition> gen_positions(const std::vector<int64_t>& ids,
                                        const std::vector<VisionGrid>& grids,
                                        const std::vector<Modality>& modality,
                                        const std::vector<Split>& splits, const LanceConfig& cfg) {
    std::vector<RopePosition> pos = mrope_positions(ids, grids, cfg);
    const bool has_full = std::any_of(splits.begin(), splits.end(),
                                      [](const Split& s) { return s.mode == SplitMode::Full; });
    if (has_full) shift_position_ids(pos, modality);
    return pos;
}

std::vector<Modality> derive_modality(const Batch& b, const std::vector<uint8_t>& cfg_drop) {
    std::vector<Modality> m(b.size(), Modality::Text);
    size_t at = 0;
    for (const Split& sp : b.splits) {
        Modality label = Modality::Text;
        if (sp.mode == SplitMode::Noise) label = Modality::Target;
        if (sp.mode == SplitMode::Full) {
            bool any_gen = false;
            for (int64_t k = 0; k < sp.len; ++k) any_gen |= b.is_gen[at + k] != 0;
            label = any_gen ? Modality::Source : Modality::Vit;
        }
        for (int64_t k = 0; k < sp.len; ++k) m[at + k] = label;
        at += sp.len;
    }
    for (size_t i = 0; i < m.size() && i < cfg_drop.size(); ++i)
        if (cfg_drop[i] && m[i] == Modality::Text) m[i] = Modality::Caption;
    return m;
}

std::vector<float> flow_time_grid(int steps, double shift) {
    std::vector<float> s(static_cast<size_t>(steps) + 1);
    for (int k = 0; k <= steps; ++k) {
        const float u = 1.0f - static_cast<float>(k) / static_cast<float>(steps);
        const float sh = static_cast<float>(shift);
        s[k] = sh * u / (1.0f + (sh - 1.0f) * u);
    }
    return s;
}

bool cfg_active(float sigma, const FlowSamplerOptions& o) {
    return o.cfg != 1.0 && sigma > o.cfg_interval_lo && sigma <= o.cfg_interval_hi;
}

void cfg_combine(const float* vc, const float* vu, size_t n, double g, bool b16, float* out) {
    const float gf = bf(static_cast<float>(g), false);
    double nc = 0, nv = 0;
    for (size_t i = 0; i < n; ++i) {
        const float c = bf(vc[i], b16), u = bf(vu[i], b16);
        const float v = bf(u + bf(gf * bf(c - u, b16), b16), b16);
        out[i] = v;
        nc += static_cast<double>(c) * c;
        nv += static_cast<double>(v) * v;
    }
    // torch.norm of a bf16 tensor accumulates in f32 and rounds its result to bf16.
    const float norm_c = bf(static_cast<float>(std::sqrt(nc)), b16);
    const float norm_v = bf(static_cast<float>(std::sqrt(nv)), b16);
    float scale = bf(norm_c / bf(norm_v + 1e-8f, b16), b16);
    scale = std::clamp(scale, 0.0f, 1.0f);
    for (size_t i = 0; i < n; ++i) out[i] = bf(out[i] * scale, b16);
}

void euler_step(float* x, const float* v, const uint8_t* gen, size_t rows, size_t C, float dt,
                bool b16) {
    for (size_t r = 0; r < rows; ++r) {
        if (!gen[r]) continue;
        for (size_t c = 0; c < C; ++c) {
            float& xi = x[r * C + c];
            xi = bf(xi - bf(v[r * C + c] * dt, b16), b16);
        }
    }
}

std::vector<float> flow_noise(uint64_t seed, size_t n) {
    Rng rng(seed);
    std::vector<float> out(n);
    for (float& v : out) v = static_cast<float>(rng.normal());
    return out;
}

void check_gen_sequence(const GenSequence& seq, const LanceConfig& cfg, const char* where) {
    const Batch& b = seq.batch;
    const size_t L = b.size(), C = cfg.latent_channels;
    if (L == 0) fail(where, ": empty sequence");
    if (b.embeddings) fail(where, ": the sampler builds its own embeddings");
    if (b.is_gen.size() != L || b.positions.size() != L)
        fail(where, ": is_gen / positions need one entry per token (", L, ")");
    check_splits(b.splits, L, where);
    size_t N = 0;
    for (uint8_t g : b.is_gen) N += g != 0;
    if (b.latents.size() != N * C) fail(where, ": the initial state needs [", N, ", ", C, "]");
    if (b.pe3d_index.size() != N) fail(where, ": pe3d_index needs ", N, " entries");
    if (seq.gen_rows.size() != N) fail(where, ": gen_rows needs ", N, " entries");
    if (seq.cfg_drop.size() != L) fail(where, ": cfg_drop needs ", L, " entries");
    if (!seq.modality.empty() && seq.modality.size() != L)
        fail(where, ": modality needs ", L, " entries");
    int noise_splits = 0;
    size_t at = 0, g = 0;
    for (size_t s = 0; s < b.splits.size(); ++s) {
        const Split& sp = b.splits[s];
        const bool noise = sp.mode == SplitMode::Noise;
        noise_splits += noise;
        for (int64_t k = 0; k < sp.len; ++k, ++at) {
            if (noise && seq.cfg_drop[at])
                fail(where, ": cfg_drop[", at,
                     "] = 1 inside the noise split (only the caption is "
                     "dropped)");
            if (b.is_gen[at]) {
                if (seq.gen_rows[g] > 1) fail(where, ": gen_rows[", g, "] must be 0 or 1");
                if (seq.gen_rows[g] && !noise)
                    fail(where, ": gen_rows[", g, "] = 1 but token ", at,
                         " lies outside the noise split");
                ++g;
            }
        }
    }
    if (noise_splits != 1)
        fail(where, ": needs exactly one noise split (the target), found ", noise_splits);
    for (size_t i = 0; i < L; ++i)
        if (seq.cfg_drop[i] > 1) fail(where, ": cfg_drop[", i, "] must be 0 or 1");
    const size_t pads = count_vit_pads(b, cfg);
    if (seq.vit_rows.size() != pads * cfg.hidden_size)
        fail(where, ": ", pads, " ViT pad rows but ", seq.vit_rows.size() / cfg.hidden_size,
             " ViT embeddings");
    if (!seq.uncond_positions.empty()) {
        size_t kept = 0;
        for (uint8_t d : seq.cfg_drop) kept += !d;
        if (seq.uncond_positions.size() != kept)
            fail(where, ": uncond_positions needs ", kept, " entries");
    }
}

void check_sampler_settings(int steps, double shift, double cfg, const std::string& where,
                            const char* flag) {
    if (steps < 1 || steps > 1000)
        fail(where, ": ", flag, "steps must be in 1..1000 (got ", steps, ")");
    if (!std::isfinite(shift) || shift <= 0 || shift > 1000)
        fail(where, ": ", flag, "shift must be a number in (0, 1000] (got ", shift, ")");
    if (!std::isfinite(cfg) || cfg < 0 || cfg > 100)
        fail(where, ": ", flag, "cfg must be a number in [0, 100] (got ", cfg, ")");
}

SampleResult flow_sample(DecoderSession& dec, const GenSequence& seq, const FlowSamplerOptions& o) {
    const LanceConfig& cfg = dec.config();
    check_gen_sequence(seq, cfg, "sample");
    check_sampler_settings(o.steps, o.shift, o.cfg, "sample");
    const bool b16 = o.bf16_state;
    const size_t C = cfg.latent_channels, L = seq.batch.size();
    const Batch& B = seq.batch;

    // Noise split [nb, ne) and its gen rows [g0, g1).
    size_t nb = 0, ne = 0;
    {
        size_t at = 0;
        for (const Split& sp : B.splits) {
            if (sp.mode == SplitMode::Noise) nb = at, ne = at + sp.len;
            at += sp.len;
        }
    }
    size_t g0 = 0, g1 = 0;
    for (size_t i = 0; i < ne; ++i) {
        if (i < nb) g0 += B.is_gen[i] != 0;
        g1 += B.is_gen[i] != 0;
    }
    const size_t N = seq.gen_rows.size(), nblk = g1 - g0;

    // Unconditional token list and its positions.
    std::vector<uint8_t> keep(L);
    for (size_t i = 0; i < L; ++i) keep[i] = !seq.cfg_drop[i];
    std::vector<RopePosition> upos_full(L);  // uncond ids at the kept tokens' original indices
    {
        std::vector<RopePosition> upos = seq.uncond_positions;
        if (upos.empty()) {
            std::vector<int64_t> ids;
            std::vector<Modality> mod;
            const std::vector<Modality> m =
                seq.modality.empty() ? derive_modality(B, seq.cfg_drop) : seq.modality;
            for (size_t i = 0; i < L; ++i)
                if (keep[i]) ids.push_back(B.token_ids[i]), mod.push_back(m[i]);
            upos = gen_positions(ids, seq.grids, mod, select_rows(B, keep, B.positions, C).splits,
                                 cfg);
        }
        size_t k = 0;
        for (size_t i = 0; i < L; ++i)
            if (keep[i]) upos_full[i] = upos[k++];
    }

    // State, rounded as Lance holds it.
    std::vector<float> x = B.latents;
    for (float& v : x) v = bf(v, b16);
    Batch work = B;  // timesteps: 0 for clean rows
    work.timesteps.assign(N, 0.0f);
    work.latents = x;

    const std::vector<float> sigma = flow_time_grid(o.steps, o.shift);
    SampleResult r;
    const auto t_start = Clock::now();
    KvCache cache_c = dec.make_cache(nb), cache_u = dec.make_cache(nb);
    ForwardOptions fo;
    fo.logits = LogitRows::None;
    fo.observer = o.observer;
    Outputs out;
    std::vector<float> emb;
    const bool need_uncond = o.cfg != 1.0;

    auto run = [&](Batch b, KvCache* cache, bool append) {
        const bool vit = count_vit_pads(b, cfg) > 0;
        if (vit) {
            embed_with_vit(dec, b, seq.vit_rows, emb);
            b.embeddings = emb.data();
        }
        dec.forward(b, cache, append, out, fo);
    };
    // Prefill (every split before the noise split), once per branch.
    if (o.kv_cache && nb > 0) {
        Batch pre = work.slice(0, nb);
        run(pre, &cache_c, true);
        if (need_uncond) {
            std::vector<uint8_t> kp(keep.begin(), keep.begin() + nb);
            const std::vector<RopePosition>& pp =
                o.uncond_cache_cond_positions ? B.positions : upos_full;
            std::vector<RopePosition> pos(pp.begin(), pp.begin() + nb);
            Batch pre_b = pre;
            pre_b.positions = pos;
            if (std::count(kp.begin(), kp.end(), 1) > 0)
                run(select_rows(pre_b, kp, pos, C), &cache_u, true);
        }
    }
    r.prefill_seconds = since(t_start);

    size_t g0_uncond = 0;  // kept gen rows before the noise split (non-KV unconditional pass)
    for (size_t i = 0; i < nb; ++i) g0_uncond += B.is_gen[i] && keep[i];
    std::vector<float> vc(nblk * C), vu(nblk * C), v(N * C, 0.0f);
    std::vector<uint8_t> gen_blk(seq.gen_rows.begin() + g0, seq.gen_rows.begin() + g1);
    const auto t_steps = Clock::now();
    for (int k = 0; k < o.steps; ++k) {
        if (o.cancelled && o.cancelled()) throw SampleCancelled();
        const auto t_k = Clock::now();
        const float t = sigma[k], dt = sigma[k] - sigma[k + 1];
        for (size_t gi = g0; gi < g1; ++gi) work.timesteps[gi] = seq.gen_rows[gi] ? t : 0.0f;
        work.latents = x;
        const bool use_cfg = need_uncond && cfg_active(t, o);
        // Velocity of the noise block's gen rows for one branch.
        auto branch = [&](bool uncond, std::vector<float>& dst) {
            if (o.kv_cache) {
                Batch chunk = work.slice(nb, ne);
                if (uncond) chunk.positions.assign(upos_full.begin() + nb, upos_full.begin() + ne);
                run(chunk, uncond ? &cache_u : &cache_c, false);
            } else {
                if (uncond) {
                    Batch u = work;
                    u.positions = upos_full;
                    run(select_rows(u, keep, upos_full, C), nullptr, false);
                } else {
                    run(work, nullptr, false);
                }
            }
            // Velocity rows of the whole forward: gen rows in order; the block's are [g0, g1)
            // (full-sequence forwards see gen rows before it too: clean source latents).
            const size_t off = o.kv_cache ? 0 : (uncond ? g0_uncond : g0);
            std::copy_n(out.velocity.begin() + off * C, nblk * C, dst.begin());
            ++r.forwards;
        };
        const bool stacked = use_cfg && o.kv_cache && o.cfg_batch;
        if (stacked) {
            // Both branches' noisy blocks in one forward, each against its own cache.
            const Batch chunk_c = work.slice(nb, ne);
            Batch chunk_u = chunk_c;
            chunk_u.positions.assign(upos_full.begin() + nb, upos_full.begin() + ne);
            const ChunkItem items[2] = {{&chunk_c, &cache_c}, {&chunk_u, &cache_u}};
            dec.forward_chunks(items, false, out, fo);
            std::copy_n(out.velocity.begin(), nblk * C, vc.begin());
            std::copy_n(out.velocity.begin() + nblk * C, nblk * C, vu.begin());
            r.forwards += 2;
        } else {
            branch(false, vc);
        }
        std::fill(v.begin(), v.end(), 0.0f);
        float* vb = v.data() + g0 * C;
        if (use_cfg) {
            if (!stacked) branch(true, vu);
            cfg_combine(vc.data(), vu.data(), nblk * C, o.cfg, b16, vb);
            ++r.cfg_steps;
        } else {
            for (size_t i = 0; i < nblk * C; ++i) vb[i] = bf(vc[i], b16);
        }
        euler_step(x.data() + g0 * C, vb, gen_blk.data(), nblk, C, dt, b16);
        r.step_seconds.push_back(since(t_k));
        if (o.keep_trajectory) {
            r.xs.push_back(x);
            r.vs.push_back(v);
        }
        if (o.on_step) o.on_step(k, o.steps, since(t_steps));
    }
    r.x = std::move(x);
    return r;
}

namespace ref {

std::vector<double> flow_time_grid(int steps, double shift) {
    std::vector<double> s;
    for (int k = 0; k <= steps; ++k) {
        const double u = 1.0 - static_cast<double>(k) / steps;
        s.push_back(shift * u / (1.0 + (shift - 1.0) * u));
    }
    return s;
}

void cfg_combine(const double* vc, const double* vu, size_t n, double g, double* out) {
    double nc = 0, nv = 0;
    for (size_t i = 0; i < n; ++i) {
        out[i] = vu[i] + g * (vc[i] - vu[i]);
        nc += vc[i] * vc[i];
        nv += out[i] * out[i];
    }
    double scale = std::sqrt(nc) / (std::sqrt(nv) + 1e-8);
    if (scale < 0) scale = 0;
    if (scale > 1) scale = 1;
    for (size_t i = 0; i < n; ++i) out[i] *= scale;
}

}  // namespace ref

}  // namespace lancet
