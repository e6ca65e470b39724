// Lance's position rules: get_rope_index over the token list, PE3D indices, split checks.
#include "model/positions.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace lancet {

std::vector<RopePosition> mrope_positions(const std::vector<int64_t>& ids,
                                          const std::vector<VisionGrid>& grids,
                                          const LanceConfig& cfg) {
    const int64_t vs = cfg.vision_start_token_id, img = cfg.image_token_id,
                  vid = cfg.video_token_id;
    const int64_t merge = cfg.vision.spatial_merge_size, tps = cfg.vision.tokens_per_second;
    const size_t n = ids.size();
    // Qwen counts blocks by the token after each vision_start, then consumes them in order.
    size_t n_img = 0, n_vid = 0;
    for (size_t i = 0; i + 1 < n; ++i)
        if (ids[i] == vs) {
            if (ids[i + 1] == img) ++n_img;
            if (ids[i + 1] == vid) ++n_vid;
        }
    std::vector<RopePosition> out(n);
    size_t st = 0, img_i = 0, vid_i = 0;
    int64_t next = 0;  // next free position
    auto text_until = [&](size_t end) {
        for (; st < end; ++st) out[st] = {next, next, next}, ++next;
    };
    for (size_t b = 0; b < n_img + n_vid; ++b) {
        size_t ed_img = n, ed_vid = n;
        if (img_i < n_img) ed_img = std::find(ids.begin() + st, ids.end(), img) - ids.begin();
        if (vid_i < n_vid) ed_vid = std::find(ids.begin() + st, ids.end(), vid) - ids.begin();
        const bool is_img = ed_img < ed_vid;
        const size_t grid_i = is_img ? img_i++ : vid_i++;
        if (grid_i >= grids.size())
            fail("M-RoPE: the token list has more vision blocks than the ", grids.size(),
                 " grid(s) given");
        const VisionGrid& g = grids[grid_i];
        if (g.t < 1 || g.h < merge || g.w < merge || g.h % merge || g.w % merge)
            fail("M-RoPE: grid ", grid_i, " (", g.t, ", ", g.h, ", ", g.w,
                 ") is not a positive multiple of the spatial merge ", merge);
        const int64_t gh = g.h / merge, gw = g.w / merge;
        const size_t count = static_cast<size_t>(g.t * gh * gw);
        const size_t ed = is_img ? ed_img : ed_vid;
        if (ed + count > n)
            fail("M-RoPE: vision block ", b, " needs ", count, " tokens from index ", ed,
                 " but the list ends at ", n);
        text_until(ed);
        const int64_t base = next, step = is_img ? 0 : tps;
        int64_t top = base;
        size_t k = ed;
        for (int64_t ti = 0; ti < g.t; ++ti)
            for (int64_t hi = 0; hi < gh; ++hi)
                for (int64_t wi = 0; wi < gw; ++wi) {
                    out[k++] = {base + ti * step, base + hi, base + wi};
                    top = std::max({top, base + ti * step, base + hi, base + wi});
                }
        st = ed + count;
        next = top + 1;
    }
    text_until(n);
    return out;
}

int64_t next_text_position(const std::vector<RopePosition>& pos) {
    int64_t top = -1;
    for (const RopePosition& p : pos) top = std::max({top, p[0], p[1], p[2]});
    return top + 1;
}

std::vector<int64_t> pe3d_indices(int64_t t, int64_t h, int64_t w, int max_latent_size) {
    std::vector<int64_t> out;
    out.reserve(static_cast<size_t>(t * h * w));
    const int64_t l = max_latent_size;
    for (int64_t ti = 0; ti < t; ++ti)
        for (int64_t hi = 0; hi < h; ++hi)
            for (int64_t wi = 0; wi < w; ++wi) out.push_back(ti * l * l + hi * l + wi);
    return out;
}

void shift_position_ids(std::vector<RopePosition>& pos, const std::vector<Modality>& modality) {
    if (pos.size() != modality.size())
        fail("shift_position_ids: ", pos.size(), " positions for ", modality.size(), " labels");
    // Each labelled group is moved as one block (Lance finds the group's first token and offsets
    // all of them by the same amount).
    for (const auto& [label, anchor] :
         {std::pair{Modality::Vit, int64_t{1000}}, std::pair{Modality::Ref, int64_t{2000}}}) {
        int64_t delta = 0;
        bool first = true;
        for (size_t i = 0; i < pos.size(); ++i)
            if (modality[i] == label) {
                if (first) delta = anchor - pos[i][0], first = false;
                pos[i][0] += delta;
            }
    }
    std::vector<size_t> src, tgt;
    for (size_t i = 0; i < pos.size(); ++i) {
        if (modality[i] == Modality::Source) src.push_back(i);
        if (modality[i] == Modality::Target) tgt.push_back(i);
    }
    if (!src.empty() && src.size() == tgt.size())
        for (size_t k = 0; k < src.size(); ++k) pos[tgt[k]] = pos[src[k]];
}

void check_splits(const std::vector<Split>& splits, size_t n, const char* what) {
    int64_t sum = 0;
    for (size_t s = 0; s < splits.size(); ++s) {
        if (splits[s].len <= 0) fail(what, ": split ", s, " has length ", splits[s].len);
        const auto m = static_cast<uint8_t>(splits[s].mode);
        if (m > 2) fail(what, ": split ", s, " has mode ", int(m), " (0 causal, 1 full, 2 noise)");
        sum += splits[s].len;
    }
    if (sum != static_cast<int64_t>(n))
        fail(what, ": split lengths sum to ", sum, " but there are ", n, " tokens");
}

void pe3d_row(int hidden, int64_t pos_id, int max_latent_size, double* out) {
    int d = hidden / 3;
    if (d % 2) --d;
    const int dims[3] = {d, d, hidden - 2 * d};
    const int64_t l2 = static_cast<int64_t>(max_latent_size) * max_latent_size;
    const double pos[3] = {static_cast<double>(pos_id / l2),
                           static_cast<double>((pos_id / max_latent_size) % max_latent_size),
                           static_cast<double>(pos_id % max_latent_size)};
    for (int a = 0; a < 3; ++a) {
        const int half = dims[a] / 2;
        for (int k = 0; k < half; ++k) {
            const double omega = 1.0 / std::pow(10000.0, k / static_cast<double>(half));
            out[k] = std::sin(pos[a] * omega);
            out[half + k] = std::cos(pos[a] * omega);
        }
        out += dims[a];
    }
}

void timestep_features(float t, size_t dim, float* out) {
    const size_t half = dim / 2;
    for (size_t k = 0; k < half; ++k) {
        const double f = std::exp(-std::log(10000.0) * static_cast<double>(k) / half);
        out[k] = static_cast<float>(std::cos(t * f));
        out[half + k] = static_cast<float>(std::sin(t * f));
    }
}

}  // namespace lancet
