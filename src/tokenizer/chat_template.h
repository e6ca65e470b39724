// Lance's chat template (data/system_prompt_render.py): Qwen2 ChatML with a system turn first.
#pragma once

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

}  // namespace lancet
