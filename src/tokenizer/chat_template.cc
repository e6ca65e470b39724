// Implementation of Lance's chat template.
#include "tokenizer/chat_template.h"

#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {

std::string render_chat(const std::string& system, const std::vector<ChatMessage>& messages) {
    std::string s = "<|im_start|>system\n" + system + "<|im_end|>\n";
    for (const ChatMessage& m : messages)
        s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (messages.empty() || messages.back().role != "assistant") s += "<|im_start|>assistant\n";
    return s;
}

std::vector<int32_t> chat_ids(const Qwen2Tokenizer& tok, const std::string& system,
                              const std::vector<ChatMessage>& messages, bool special_in_content) {
    if (special_in_content) return tok.encode(render_chat(system, messages));
    const int32_t start = tok.special_id("<|im_start|>");
    const int32_t end = tok.special_id("<|im_end|>");
    std::vector<int32_t> ids;
    auto plain = [&](const std::string& text) {
        const std::vector<int32_t> p = tok.encode_plain_text(text);
        ids.insert(ids.end(), p.begin(), p.end());
    };
    auto turn = [&](const std::string& role, const std::string& content) {
        ids.push_back(start);
        plain(role + "\n" + content);
        ids.push_back(end);
        plain("\n");
    };
    turn("system", system);
    for (const ChatMessage& m : messages) turn(m.role, m.content);
    if (messages.empty() || messages.back().role != "assistant") {
        ids.push_back(start);
        plain("assistant\n");
    }
    return ids;
}

}  // namespace lancet
