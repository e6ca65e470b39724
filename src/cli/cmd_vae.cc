// `lancet vae encode|decode`: the Wan2.2 VAE file to file (safetensors in and out for now).
#include "cli/commands.h"
#include "pipeline/vae_codec.h"

namespace lancet::cli {

void add_vae(CLI::App& app) {
    auto* vae = app.add_subcommand("vae", "Encode videos to Wan2.2 latents or decode latents");
    vae->require_subcommand(1);
    struct Args {
        std::string vae, input, out;
        VaeEncodeOptions enc;
        VaeDecodeOptions dec;
    };
    auto a = std::make_shared<Args>();
    auto* enc = vae->add_subcommand(
        "encode", "video [3, T, H, W] in [-1, 1] (safetensors 'video') -> 'latent' [48, t, h, w]");
    auto* dec = vae->add_subcommand(
        "decode", "latent [48, t, h, w] (safetensors 'latent') -> 'video' [3, T, H, W] in [-1, 1]");
    for (auto* c : {enc, dec}) {
        c->add_option("--vae", a->vae, "Wan2.2_VAE.pth (or .safetensors), or a Lance model folder")
            ->required();
        c->add_option("--input", a->input, "Input .safetensors")->required();
        c->add_option("-o,--out", a->out, "Output .safetensors")->required();
    }
    enc->add_flag(
        "--sample", a->enc.sample,
        "Sample mean + exp(logvar/2)·N(0,1) as Lance's editing path does (default: mean)");
    enc->add_flag("--crop", a->enc.crop,
                  "Centre-crop sides to multiples of 16 and keep the first 4k+1 frames, as Lance "
                  "does, instead of refusing such input");
    enc->add_option("--seed", a->enc.seed, "Seed of --sample")->capture_default_str();
    dec->add_option("--tile", a->dec.tile,
                    "Decode in spatial tiles of at most N x N latent positions (16N pixels), "
                    "blended over the overlap; bounds memory for large frames");
    dec->add_option("--tile-overlap", a->dec.overlap,
                    "Latent positions shared by neighbouring tiles (default 0)");
    enc->callback([a] { vae_encode_file(a->vae, a->input, a->out, a->enc); });
    dec->callback([a] { vae_decode_file(a->vae, a->input, a->out, a->dec); });
}

}  // namespace lancet::cli
