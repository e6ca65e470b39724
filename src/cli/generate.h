// Generation entry points other commands reuse (cmd_generate.cc).
#pragma once

#include <string>

namespace lancet::cli {

// `lancet demo`'s generation step: a t2i image (64x64) and a 5-frame 32x32 t2v clip from `model`,
// with the VAE at `vae`, 10 steps, Lance's other defaults.
void demo_generate(const std::string& model, const std::string& vae, const std::string& out_png,
                   const std::string& out_mp4);

}  // namespace lancet::cli
