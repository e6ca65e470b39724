// `lancet vae encode|decode`: the Wan2.2 VAE file to file (images, videos or tensors in; PNG, MP4
// or tensors out).
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
    auto* enc = vae->add_subcommand("encode",
                                    "An image, a video or a 'video' tensor [3, T, H, W] in [-1, 1] "
                                    "-> 'latent' [48, t, h, w] (safetensors)");
    auto* dec = vae->add_subcommand(
        "decode",
        "latent [48, t, h, w] (safetensors 'latent') -> a PNG, an MP4 (12 fps) or a 'video' "
        "tensor [3, T, H, W] in [-1, 1]");
    for (auto* c : {enc, dec})
        c->add_option("--vae", a->vae, "Wan2.2_VAE.pth (or .safetensors), or a Lance model folder")
            ->required();
    enc->add_option("--input", a->input,
                    "Input by extension: .safetensors ('video'), an image (.png .jpg .jpeg .webp) "
                    "or a video (.mp4 .mkv .mov .webm .avi; frames sampled as Lance does)")
        ->required();
    enc->add_option("-o,--out", a->out, "Output .safetensors ('latent')")->required();
    dec->add_option("--input", a->input, "Input .safetensors ('latent')")->required();
    dec->add_option("-o,--out", a->out,
                    "Output by extension: .png (one latent frame), .mp4 (H.264, 12 fps) or "
                    ".safetensors ('video')")
        ->required();
    enc->add_option("--preset", a->enc.preset,
                    "Image/video input through Lance's VAE preprocessing of this preset (bucket, "
                    "resize, crop to 16): image_256res, image_512res, image_768res, video_192p, "
                    "video_360p, video_480p (default: the pixels as they are)");
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
