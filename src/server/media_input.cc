// Implementation of the server's media input helpers.
#include "server/media_input.h"

#include <filesystem>

#include "core/error.h"

namespace lancet::server {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int value_of(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;  // '-' and '_': the URL-safe alphabet
    if (c == '/' || c == '_') return 63;
    return -1;
}

}  // namespace

std::string base64_decode(const std::string& text, const std::string& what) {
    std::string out;
    out.reserve(text.size() / 4 * 3 + 3);
    uint32_t acc = 0;
    int bits = 0;
    size_t pad = 0;
    for (char c : text) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            ++pad;
            continue;
        }
        const int v = value_of(c);
        if (v < 0 || pad) fail(what, ": not valid base64");
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    if (pad > 2 || bits >= 6) fail(what, ": not valid base64 (truncated)");
    return out;
}

std::string base64_encode(const std::string& bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                           (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                           static_cast<uint8_t>(bytes[i + 2]);
        for (int k = 3; k >= 0; --k) out.push_back(kAlphabet[(v >> (6 * k)) & 63]);
    }
    if (i < bytes.size()) {
        uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
        if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
        out.push_back(kAlphabet[(v >> 18) & 63]);
        out.push_back(kAlphabet[(v >> 12) & 63]);
        out.push_back(i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

std::string decode_data_url(const std::string& url, const std::string& what, std::string* mime) {
    if (mime) mime->clear();
    if (url.rfind("data:", 0) != 0) return base64_decode(url, what);
    const size_t comma = url.find(',');
    if (comma == std::string::npos) fail(what, ": a data URL needs a ',' before its payload");
    const std::string head = url.substr(5, comma - 5);
    if (head.size() < 7 || head.compare(head.size() - 7, 7, ";base64") != 0)
        fail(what, ": only base64 data URLs are accepted (data:<type>;base64,...)");
    if (mime) *mime = head.substr(0, head.size() - 7);
    return base64_decode(url.substr(comma + 1), what);
}

std::string confined_local_file(const std::string& path, const std::string& root,
                                const std::string& what) {
    namespace fs = std::filesystem;
    if (root.empty())
        fail(what,
             ": local files are not allowed by this server (start it with "
             "--allow-local-files DIR); send a data URL");
    std::string p = path;
    if (p.rfind("file://", 0) == 0) p = p.substr(7);
    std::error_code ec;
    const fs::path base = fs::canonical(root, ec);
    if (ec) fail(what, ": the allowed folder is missing");
    const fs::path full =
        fs::weakly_canonical(fs::path(p).is_absolute() ? fs::path(p) : base / p, ec);
    if (ec) fail(what, ": cannot resolve the path");
    const auto rel = full.lexically_relative(base);
    if (rel.empty() || *rel.begin() == "..")
        fail(what, ": the path is outside the folder this server allows");
    if (!fs::is_regular_file(full, ec)) fail(what, ": no such file in the allowed folder");
    return full.string();
}

}  // namespace lancet::server
