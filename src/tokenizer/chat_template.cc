// Implementation of Lance's chat template.
#include "tokenizer/chat_template.h"

namespace lancet {

std::string render_chat(const std::string& system, const std::vector<ChatMessage>& messages) {
    std::string s = "<|im_start|>system\n" + system + "<|im_end|>\n";
    for (const ChatMessage& m : messages)
        s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (messages.empty() || messages.back().role != "assistant") s += "<|im_start|>assistant\n";
    return s;
}

}  // namespace lancet
