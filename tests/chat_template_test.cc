// The chat template renders the exact text Lance's Jinja template produces.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

namespace lancet {
namespace {

TEST(ChatTemplate, RendersLanceChatMl) {
    // Written out by hand from data/system_prompt_render.py's JINJA_PROMPT_TMPL with
    // include_assistant_content=False and a trailing empty assistant turn.
    EXPECT_EQ(render_chat(kDefaultSystemPrompt, {{"user", "Hi there"}}),
              "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(render_chat("S", {{"user", "a"}, {"assistant", "b"}, {"user", "c"}}),
              "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n"
              "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
              "<|im_start|>assistant\n");
}

}  // namespace
}  // namespace lancet
