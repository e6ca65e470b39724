// Lance's chat template (data/system_prompt_render.py): Qwen2 ChatML with a system turn first.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lancet {

struct ChatMessage {
    std::string role;  // "user" or "assistant"
    std::string content;
};

// Lance's default system prompt for understanding when the request names none.
inline const char* kDefaultSystemPrompt = "You are a helpful assistant.";

// Renders "<|im_start|>system\n{system}<|im_end|>\n" then each message as
// "<|im_start|>{role}\n{content}<|im_end|>\n", and, when the last message is from the user, opens
// the assistant turn "<|im_start|>assistant\n" for generation (the reference's
// include_assistant_content=False rendering).
std::string render_chat(const std::string& system, const std::vector<ChatMessage>& messages);

class Qwen2Tokenizer;

// The ids of render_chat(system, messages). With special_in_content = false (untrusted text: the
// server, `run` without --special) the system prompt, roles and contents are tokenized as plain
// text, so only the template's own <|im_start|>/<|im_end|> are special tokens; the segments
// between them are encoded whole, as HF splits the rendered string at added tokens, so text free of
// special-token strings gives the same ids either way. With true: tok.encode of the rendered text.
std::vector<int32_t> chat_ids(const Qwen2Tokenizer& tok, const std::string& system,
                              const std::vector<ChatMessage>& messages, bool special_in_content);

}  // namespace lancet
