// Qwen2 byte-level BPE: loading the HF files, NFC, added-token split, PCRE2 pre-tokenizer, BPE.
#include "tokenizer/qwen2_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "core/error.h"
#include "io/json_file.h"

namespace lancet {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// HF's PRETOKENIZE_REGEX for Qwen2 (transformers/models/qwen2/tokenization_qwen2.py) is
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// run by Python's `regex` module, whose \s is the Unicode White_Space property. PCRE2's \s under
// UCP also takes U+180E (it is in \h), so \s is spelled out as White_Space here to split the same.
#define LANCET_WS                                                                   \
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}" \
    "\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr const char* kPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}"
    "| ?[^" LANCET_WS
    "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" LANCET_WS
    "]*[\\r\\n]+"
    "|[" LANCET_WS "]+(?![^" LANCET_WS
    "])"
    "|[" LANCET_WS "]+";
#undef LANCET_WS

// Words longer than this are not cached: they are rare and would bloat the cache.
constexpr size_t kMaxCachedWord = 64;
constexpr size_t kMaxCacheEntries = 1 << 18;

// GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other 68 bytes
// (controls, space, 0x7F-0xA0, 0xAD) map in order to U+0100 upwards.
std::vector<uint32_t> byte_to_codepoint() {
    std::vector<uint32_t> table(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) table[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    return table;
}

void append_utf8(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

enum class SeqStatus { Valid, Invalid, Incomplete };

// Classifies the UTF-8 sequence starting at p[0]. `len` is the sequence length when Valid, the
// length of the maximal invalid subpart when Invalid (at least 1), and the bytes present when
// Incomplete (the sequence is a valid prefix cut by the end of the buffer).
SeqStatus classify_utf8(const unsigned char* p, size_t avail, size_t& len) {
    const unsigned char b = p[0];
    if (b < 0x80) {
        len = 1;
        return SeqStatus::Valid;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
        need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 3;
        if (b == 0xE0) lo = 0xA0;  // no overlong forms
        if (b == 0xED) hi = 0x9F;  // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        len = 1;
        return SeqStatus::Invalid;
    }
    for (size_t k = 1; k < need; ++k) {
        if (k >= avail) {
            len = k;
            return SeqStatus::Incomplete;
        }
        const unsigned char c = p[k];
        const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
        if (!ok) {
            len = k;
            return SeqStatus::Invalid;
        }
    }
    len = need;
    return SeqStatus::Valid;
}

// Decodes one valid UTF-8 sequence of `len` bytes.
uint32_t decode_cp(const unsigned char* p, size_t len) {
    if (len == 1) return p[0];
    uint32_t cp = p[0] & (0xFF >> (len + 1));
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[k] & 0x3F);
    return cp;
}

// Python's str.isspace(), which str.lstrip()/rstrip() use for the added tokens' lstrip/rstrip.
bool python_isspace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string python_lstrip(const std::string& s) {
    size_t i = 0, len = 0;
    while (i < s.size()) {
        classify_utf8(reinterpret_cast<const unsigned char*>(s.data()) + i, s.size() - i, len);
        if (!python_isspace(decode_cp(reinterpret_cast<const unsigned char*>(s.data()) + i, len)))
            break;
        i += len;
    }
    return s.substr(i);
}

std::string python_rstrip(const std::string& s) {
    size_t end = s.size();
    while (end > 0) {
        size_t start = end - 1;
        while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        const uint32_t cp =
            decode_cp(reinterpret_cast<const unsigned char*>(s.data()) + start, end - start);
        if (!python_isspace(cp)) break;
        end = start;
    }
    return s.substr(0, end);
}

// The id tables are sized by the largest id (~65 bytes each), so a stray id like 10^9 would ask
// for tens of GB; 2^24 is 64x the largest real vocabularies and caps the tables near 1 GB.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

std::string read_whole(const fs::path& p) {
    std::error_code ec;
    if (!fs::exists(p, ec)) fail(p.string(), ": file missing");
    if (fs::is_directory(p, ec)) fail(p.string(), ": is a directory, expected a file");
    std::ifstream in(p, std::ios::binary);
    if (!in) fail(p.string(), ": cannot open");
    std::ostringstream os;
    os << in.rdbuf();
    if (in.bad()) fail(p.string(), ": read error");
    return os.str();
}

// The strict parser of io/: a syntax error, invalid UTF-8 or a duplicate key (which a lenient
// parser would resolve silently, e.g. two ids for one token) is an error naming the file.
json parse_json(const fs::path& p) { return parse_strict_json(read_whole(p), p.string()); }

// A special-token field of tokenizer_config.json: a string, an AddedToken object with "content",
// or null/absent.
std::string special_content(const json& v, const fs::path& where, const std::string& key) {
    if (v.is_null()) return {};
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
        return v["content"].get<std::string>();
    fail(where.string(), ": \"", key, "\" must be a string, null or an object with \"content\"");
}

struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct Qwen2Tokenizer::Regex {
    pcre2_code* code = nullptr;
    ~Regex() {
        if (code) pcre2_code_free(code);
    }
};

struct Qwen2Tokenizer::Cache {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};

Qwen2Tokenizer::Qwen2Tokenizer() = default;
Qwen2Tokenizer::Qwen2Tokenizer(Qwen2Tokenizer&&) noexcept = default;
Qwen2Tokenizer& Qwen2Tokenizer::operator=(Qwen2Tokenizer&&) noexcept = default;
Qwen2Tokenizer::~Qwen2Tokenizer() = default;

size_t utf8_decode_replace(std::string_view bytes, bool hold_tail, std::string& out) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    const size_t n = bytes.size();
    size_t i = 0;
    while (i < n) {
        // Runs of ASCII are the common case; copy them in one go.
        size_t j = i;
        while (j < n && p[j] < 0x80) ++j;
        out.append(bytes.data() + i, j - i);
        i = j;
        if (i == n) break;
        size_t len = 0;
        switch (classify_utf8(p + i, n - i, len)) {
            case SeqStatus::Valid:
                out.append(bytes.data() + i, len);
                break;
            case SeqStatus::Invalid:
                out += "\xEF\xBF\xBD";
                break;
            case SeqStatus::Incomplete:
                if (hold_tail) return i;
                out += "\xEF\xBF\xBD";
                break;
        }
        i += len;
    }
    return n;
}

std::string nfc_normalize(std::string_view utf8) {
    const auto* p = reinterpret_cast<const unsigned char*>(utf8.data());
    bool ascii = true;
    for (size_t i = 0; i < utf8.size();) {
        if (p[i] < 0x80) {
            ++i;
            continue;
        }
        ascii = false;
        size_t len = 0;
        if (classify_utf8(p + i, utf8.size() - i, len) != SeqStatus::Valid)
            fail("input text is not valid UTF-8 (byte offset ", i, ")");
        i += len;
    }
    if (ascii) return std::string(utf8);  // ASCII is already NFC
    utf8proc_uint8_t* mapped = nullptr;
    const utf8proc_ssize_t r =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                     static_cast<utf8proc_ssize_t>(utf8.size()), &mapped,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (r < 0) fail("NFC normalisation failed: ", utf8proc_errmsg(r));
    std::string out(reinterpret_cast<const char*>(mapped), static_cast<size_t>(r));
    std::free(mapped);
    return out;
}

Qwen2Tokenizer Qwen2Tokenizer::load(const std::string& dir) {
    const fs::path root(dir);
    std::error_code ec;
    if (!fs::exists(root, ec)) fail(dir, ": tokenizer folder does not exist");
    if (!fs::is_directory(root, ec)) fail(dir, ": is not a folder (expected the tokenizer folder)");
    const fs::path vocab_path = root / "vocab.json", merges_path = root / "merges.txt",
                   config_path = root / "tokenizer_config.json";

    Qwen2Tokenizer t;
    const std::vector<uint32_t> b2u = byte_to_codepoint();
    std::vector<int> u2b(512, -1);
    for (int b = 0; b < 256; ++b) u2b[b2u[b]] = b;

    // vocab.json: {"token": id}. Each token is spelled in the byte-level alphabet.
    const json vocab = parse_json(vocab_path);
    if (!vocab.is_object()) fail(vocab_path.string(), ": expected a JSON object {token: id}");
    int32_t max_vocab_id = -1;
    std::vector<std::pair<std::string, int32_t>> entries;
    entries.reserve(vocab.size());
    for (const auto& [token, value] : vocab.items()) {
        if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
            value.get<int64_t>() >= kMaxTokenId)
            fail(vocab_path.string(), ": id of token \"", token,
                 "\" is not an integer in [0, 2^24)");
        const auto id = static_cast<int32_t>(value.get<int64_t>());
        entries.emplace_back(token, id);
        max_vocab_id = std::max(max_vocab_id, id);
    }
    if (entries.empty()) fail(vocab_path.string(), ": empty vocabulary");
    t.id_token_.assign(static_cast<size_t>(max_vocab_id) + 1, std::string());
    t.id_bytes_.assign(t.id_token_.size(), std::string());
    t.id_kind_.assign(t.id_token_.size(), 0);
    for (auto& [token, id] : entries) {
        if (t.id_kind_[id] != 0)
            fail(vocab_path.string(), ": id ", id, " is used by both \"", t.id_token_[id],
                 "\" and \"", token, "\"");
        std::string bytes;
        const auto* p = reinterpret_cast<const unsigned char*>(token.data());
        for (size_t i = 0; i < token.size();) {
            size_t len = 0;
            classify_utf8(p + i, token.size() - i, len);
            const uint32_t cp = decode_cp(p + i, len);
            if (cp >= u2b.size() || u2b[cp] < 0)
                fail(vocab_path.string(), ": token \"", token, "\" (id ", id,
                     ") has a character outside the byte-level alphabet");
            bytes += static_cast<char>(u2b[cp]);
            i += len;
        }
        t.id_kind_[id] = 1;
        t.id_bytes_[id] = std::move(bytes);
        t.token_ids_.emplace(token, id);
        t.id_token_[id] = std::move(token);
    }
    for (int b = 0; b < 256; ++b) {
        std::string s;
        append_utf8(b2u[b], s);
        const auto it = t.token_ids_.find(s);
        if (it == t.token_ids_.end())
            fail(vocab_path.string(), ": missing the byte-level token \"", s, "\" for byte ", b);
        t.byte_symbol_[b] = it->second;
    }

    // merges.txt: one "left right" pair per line, rank = line order. Strings that are not vocab
    // entries get extra symbol ids so the merge table stays a pure id -> id map.
    std::unordered_map<std::string, int32_t> extra_symbols;
    int32_t next_symbol = max_vocab_id + 1;
    const auto symbol_of = [&](const std::string& s) {
        if (const auto it = t.token_ids_.find(s); it != t.token_ids_.end()) return it->second;
        const auto [it, inserted] = extra_symbols.emplace(s, next_symbol);
        if (inserted) ++next_symbol;
        return it->second;
    };
    {
        const std::string text = read_whole(merges_path);
        size_t pos = 0;
        int32_t line_no = 0;
        while (pos < text.size()) {
            size_t end = text.find('\n', pos);
            if (end == std::string::npos) end = text.size();
            std::string_view line(text.data() + pos, end - pos);
            pos = end + 1;
            ++line_no;
            while (!line.empty() &&
                   (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
                line.remove_suffix(1);
            while (!line.empty() && (line.front() == ' ' || line.front() == '\t'))
                line.remove_prefix(1);
            if (line.empty() || (line_no == 1 && line.starts_with("#version:"))) continue;
            const size_t sp = line.find_first_of(" \t");
            const std::string_view left = line.substr(0, std::min(sp, line.size()));
            std::string_view right =
                sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
            while (!right.empty() && (right.front() == ' ' || right.front() == '\t'))
                right.remove_prefix(1);
            if (right.empty() || right.find_first_of(" \t") != std::string_view::npos)
                fail(merges_path.string(), ":", line_no,
                     ": expected two tokens separated by a space, got \"", line, "\"");
            const int32_t a = symbol_of(std::string(left)), b = symbol_of(std::string(right));
            const int32_t ab = symbol_of(std::string(left) + std::string(right));
            // A repeated pair keeps its last rank, as HF's dict(zip(merges, ranks)) does.
            t.merges_[(static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b)] = {line_no, ab};
        }
    }

    // tokenizer_config.json: added tokens (ids beyond the vocab) and the special-token names.
    const json config = parse_json(config_path);
    if (!config.is_object()) fail(config_path.string(), ": expected a JSON object");
    if (config.contains("added_tokens_decoder")) {
        const json& atd = config["added_tokens_decoder"];
        if (!atd.is_object())
            fail(config_path.string(), ": \"added_tokens_decoder\" must be an object");
        for (const auto& [key, v] : atd.items()) {
            char* endp = nullptr;
            const long long id = std::strtoll(key.c_str(), &endp, 10);
            if (key.empty() || *endp != '\0' || id < 0 || id >= kMaxTokenId)
                fail(config_path.string(), ": added_tokens_decoder key \"", key,
                     "\" is not a token id");
            if (!v.is_object() || !v.contains("content") || !v["content"].is_string() ||
                v["content"].get<std::string>().empty())
                fail(config_path.string(), ": added_tokens_decoder[\"", key,
                     "\"] needs a non-empty string \"content\"");
            AddedToken a;
            a.content = v["content"].get<std::string>();
            a.id = static_cast<int32_t>(id);
            // Plain references: clang 14 cannot capture structured bindings in a lambda.
            const auto& entry = v;
            const std::string& entry_key = key;
            const auto flag = [&](const char* name) {
                if (!entry.contains(name) || entry[name].is_null()) return false;
                if (!entry[name].is_boolean())
                    fail(config_path.string(), ": added_tokens_decoder[\"", entry_key, "\"].", name,
                         " must be true or false");
                return entry[name].get<bool>();
            };
            a.lstrip = flag("lstrip");
            a.rstrip = flag("rstrip");
            a.single_word = flag("single_word");
            a.special = flag("special");
            // `normalized` changes nothing in the slow tokenizer: prepare_for_tokenization runs
            // NFC over the whole text before added tokens are looked for.
            (void)flag("normalized");
            t.added_.push_back(std::move(a));
        }
    }
    // Special-token names the config gives but no added token holds yet are added after the
    // last id, in the order of HF's SPECIAL_TOKENS_ATTRIBUTES.
    std::vector<std::string> specials;
    std::string eos, pad, bos;
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                            "cls_token", "mask_token"}) {
        if (!config.contains(key)) continue;
        std::string s = special_content(config[key], config_path, key);
        if (s.empty()) continue;
        if (std::string(key) == "eos_token") eos = s;
        if (std::string(key) == "pad_token") pad = s;
        if (std::string(key) == "bos_token") bos = s;
        specials.push_back(std::move(s));
    }
    if (config.contains("additional_special_tokens")) {
        const json& ast = config["additional_special_tokens"];
        if (!ast.is_array() && !ast.is_null())
            fail(config_path.string(), ": \"additional_special_tokens\" must be a list");
        if (ast.is_array())
            for (const json& v : ast) {
                std::string s = special_content(v, config_path, "additional_special_tokens");
                if (!s.empty()) specials.push_back(std::move(s));
            }
    }

    std::sort(t.added_.begin(), t.added_.end(),
              [](const AddedToken& x, const AddedToken& y) { return x.id < y.id; });
    const auto register_added = [&](const AddedToken& a) {
        if (static_cast<size_t>(a.id) >= t.id_token_.size()) {
            t.id_token_.resize(static_cast<size_t>(a.id) + 1);
            t.id_bytes_.resize(static_cast<size_t>(a.id) + 1);
            t.id_kind_.resize(static_cast<size_t>(a.id) + 1, 0);
        }
        if (t.id_kind_[a.id] != 0 && t.id_token_[a.id] != a.content)
            fail(config_path.string(), ": added token \"", a.content, "\" has id ", a.id,
                 ", which is already \"", t.id_token_[a.id], "\"");
        t.id_token_[a.id] = a.content;
        t.id_bytes_[a.id] = a.content;
        t.id_kind_[a.id] = a.special ? 3 : 2;
        t.token_ids_[a.content] = a.id;  // added tokens win over vocab, as in HF get_vocab()
    };
    for (const AddedToken& a : t.added_) register_added(a);
    for (const std::string& s : specials) {
        const auto it = std::find_if(t.added_.begin(), t.added_.end(),
                                     [&](const AddedToken& a) { return a.content == s; });
        if (it != t.added_.end()) {
            it->special = true;
            t.id_kind_[it->id] = 3;
            continue;
        }
        AddedToken a;
        a.content = s;
        a.id = static_cast<int32_t>(t.id_token_.size());
        a.special = true;
        register_added(a);
        t.added_.push_back(a);
    }
    t.size_ = t.token_ids_.size();
    const auto id_or_none = [&](const std::string& s) {
        if (s.empty()) return int32_t{-1};
        const auto it = t.token_ids_.find(s);
        return it == t.token_ids_.end() ? int32_t{-1} : it->second;
    };
    t.eos_id_ = id_or_none(eos);
    t.pad_id_ = id_or_none(pad);
    t.bos_id_ = id_or_none(bos);

    t.added_by_first_byte_.assign(256, {});
    for (size_t i = 0; i < t.added_.size(); ++i)
        t.added_by_first_byte_[static_cast<unsigned char>(t.added_[i].content[0])].push_back(i);
    for (auto& list : t.added_by_first_byte_)
        std::stable_sort(list.begin(), list.end(), [&](size_t x, size_t y) {
            return t.added_[x].content.size() > t.added_[y].content.size();
        });

    // What a BPE result is emitted as: the vocab id, or the added token of the same text (HF
    // converts tokens to ids through the added-token table first).
    t.symbol_out_.assign(static_cast<size_t>(next_symbol), -1);
    for (int32_t id = 0; id <= max_vocab_id; ++id)
        if (t.id_kind_[id] == 1) t.symbol_out_[id] = id;
    for (const AddedToken& a : t.added_) {
        if (const auto it = extra_symbols.find(a.content); it != extra_symbols.end())
            t.symbol_out_[it->second] = a.id;
    }
    for (const auto& [token, id] : entries) {
        if (const AddedToken* a = t.added_by_content(token)) t.symbol_out_[id] = a->id;
    }

    t.regex_ = std::make_unique<Regex>();
    int err = 0;
    PCRE2_SIZE err_off = 0;
    t.regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
    if (!t.regex_->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("pre-tokenizer pattern does not compile at ", err_off, ": ",
             reinterpret_cast<const char*>(msg));
    }
    // JIT is an optimisation only; the interpreter gives the same matches when it is unavailable.
    (void)pcre2_jit_compile(t.regex_->code, PCRE2_JIT_COMPLETE);
    t.cache_ = std::make_unique<Cache>();
    return t;
}

const Qwen2Tokenizer::AddedToken* Qwen2Tokenizer::added_by_content(std::string_view s) const {
    if (s.empty()) return nullptr;
    for (size_t i : added_by_first_byte_[static_cast<unsigned char>(s[0])])
        if (added_[i].content == s) return &added_[i];
    return nullptr;
}

bool Qwen2Tokenizer::valid_id(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < id_kind_.size() && id_kind_[id] != 0;
}

const std::string& Qwen2Tokenizer::token_bytes(int32_t id) const {
    if (!valid_id(id)) fail("token id ", id, " is out of range (vocabulary of ", size_, ")");
    return id_bytes_[id];
}

int32_t Qwen2Tokenizer::token_to_id(std::string_view token) const {
    const auto it = token_ids_.find(std::string(token));
    return it == token_ids_.end() ? -1 : it->second;
}

const std::string& Qwen2Tokenizer::id_to_token(int32_t id) const {
    if (!valid_id(id)) fail("token id ", id, " is out of range (vocabulary of ", size_, ")");
    return id_token_[id];
}

int32_t Qwen2Tokenizer::special_id(std::string_view text) const {
    const AddedToken* a = added_by_content(text);
    if (!a) fail("tokenizer has no added token \"", text, "\"");
    return a->id;
}

bool Qwen2Tokenizer::is_added(int32_t id) const { return valid_id(id) && id_kind_[id] >= 2; }
bool Qwen2Tokenizer::is_special(int32_t id) const { return valid_id(id) && id_kind_[id] == 3; }

namespace {

// Calls fn(piece) for every match of the pre-tokenizer pattern, left to right, like re.findall.
template <typename Fn>
void for_each_piece(const pcre2_code* code, std::string_view text, Fn&& fn) {
    if (text.empty()) return;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    if (!md) fail("out of memory in the pre-tokenizer");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    PCRE2_SIZE offset = 0;
    try {
        while (offset < text.size()) {
            // The text was validated and NFC-normalised, so the UTF check is skipped (it would
            // rescan the whole subject on every call).
            const int rc =
                pcre2_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, md, nullptr);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                fail("pre-tokenizer match failed at byte ", offset, ": ",
                     reinterpret_cast<const char*>(msg));
            }
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            if (ov[1] == ov[0]) {
                // The pattern cannot match empty; step one character if it ever did.
                offset = ov[1] + 1;
                while (offset < text.size() &&
                       (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80)
                    ++offset;
                continue;
            }
            fn(text.substr(ov[0], ov[1] - ov[0]));
            offset = ov[1];
        }
    } catch (...) {
        pcre2_match_data_free(md);
        throw;
    }
    pcre2_match_data_free(md);
}

}  // namespace

std::vector<std::string> Qwen2Tokenizer::pre_tokenize(std::string_view nfc_text) const {
    std::vector<std::string> pieces;
    for_each_piece(regex_->code, nfc_text,
                   [&](std::string_view piece) { pieces.emplace_back(piece); });
    return pieces;
}

// BPE over the bytes of one pre-tokenized word. Like HF's bpe(): repeatedly take the pair of
// lowest merge rank and merge all its occurrences left to right. A heap ordered by (rank, position)
// does this without rescanning; new pairs are queued only after every occurrence of the current
// rank is merged, so a lower-ranked pair created mid-pass cannot jump ahead of that pass.
void Qwen2Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
    const size_t n = word.size();
    const auto emit = [&](int32_t symbol) {
        const int32_t id = symbol_out_[symbol];
        if (id < 0) fail("BPE produced a token that is not in vocab.json (symbol ", symbol, ")");
        out.push_back(id);
    };
    if (n == 1) {
        emit(byte_symbol_[static_cast<unsigned char>(word[0])]);
        return;
    }
    std::vector<int32_t> sym(n), next(n), prev(n);
    for (size_t i = 0; i < n; ++i) {
        sym[i] = byte_symbol_[static_cast<unsigned char>(word[i])];
        next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
        prev[i] = static_cast<int32_t>(i) - 1;
    }
    struct Entry {
        int32_t rank, pos, left, right, result;
        bool operator>(const Entry& o) const {
            return rank != o.rank ? rank > o.rank : pos > o.pos;
        }
    };
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    const auto consider = [&](int32_t pos) {
        if (pos < 0 || next[pos] < 0) return;
        const int32_t l = sym[pos], r = sym[next[pos]];
        const auto it = merges_.find((static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r));
        if (it == merges_.end()) return;
        heap.push(Entry{it->second.rank, pos, l, r, it->second.result});
    };
    for (size_t i = 0; i + 1 < n; ++i) consider(static_cast<int32_t>(i));
    std::vector<int32_t> touched;
    while (!heap.empty()) {
        const int32_t rank = heap.top().rank;
        touched.clear();
        while (!heap.empty() && heap.top().rank == rank) {
            const Entry e = heap.top();
            heap.pop();
            // Stale entries: the left symbol was merged away or changed, or its neighbour did.
            if (sym[e.pos] != e.left || next[e.pos] < 0 || sym[next[e.pos]] != e.right) continue;
            const int32_t right = next[e.pos];
            sym[e.pos] = e.result;
            sym[right] = -1;
            next[e.pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = e.pos;
            touched.push_back(e.pos);
        }
        // Only now queue the pairs the pass created (see above).
        for (int32_t pos : touched) {
            if (sym[pos] < 0) continue;
            consider(prev[pos]);
            consider(pos);
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) emit(sym[i]);
}

void Qwen2Tokenizer::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
    for_each_piece(regex_->code, text, [&](std::string_view word) {
        if (word.size() > kMaxCachedWord) {
            bpe_word(word, out);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(cache_->mu);
            const auto it = cache_->words.find(word);
            if (it != cache_->words.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        const size_t start = out.size();
        bpe_word(word, out);
        std::lock_guard<std::mutex> lock(cache_->mu);
        if (cache_->words.size() >= kMaxCacheEntries) cache_->words.clear();
        cache_->words.emplace(
            std::string(word),
            std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(start), out.end()));
    });
}

std::vector<int32_t> Qwen2Tokenizer::encode(std::string_view utf8) const {
    const std::string text = nfc_normalize(utf8);

    // Split around added tokens, leftmost-longest (what HF's Trie.split finds), into pieces.
    std::vector<std::string> pieces;
    size_t last = 0;
    for (size_t i = 0; i < text.size();) {
        const AddedToken* hit = nullptr;
        for (size_t k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
            const std::string& c = added_[k].content;
            if (text.compare(i, c.size(), c) == 0) {
                hit = &added_[k];
                break;  // lists are longest first
            }
        }
        if (!hit) {
            ++i;
            continue;
        }
        if (i > last) pieces.push_back(text.substr(last, i - last));
        pieces.push_back(hit->content);
        i += hit->content.size();
        last = i;
    }
    if (last < text.size()) pieces.push_back(text.substr(last));

    // The lstrip/rstrip/single_word rules of PreTrainedTokenizer.tokenize, applied in place and in
    // the same order (a later piece sees the edits made for earlier ones).
    for (size_t i = 0; i < pieces.size(); ++i) {
        const AddedToken* a = added_by_content(pieces[i]);
        if (!a) continue;
        // HF reads left and right once, before editing, and tests single_word on those values.
        const std::string left = i > 0 ? pieces[i - 1] : std::string();
        const std::string right = i + 1 < pieces.size() ? pieces[i + 1] : std::string();
        if (a->rstrip && !right.empty()) pieces[i + 1] = python_lstrip(right);
        if (a->lstrip && !left.empty()) pieces[i - 1] = python_rstrip(left);
        if (a->single_word && !left.empty() && left.back() != ' ') {
            pieces[i - 1] += pieces[i];
            pieces[i].clear();
        } else if (a->single_word && !right.empty() && right[0] != ' ') {
            pieces[i] += pieces[i + 1];
            pieces[i + 1].clear();
        }
    }

    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    for (const std::string& piece : pieces) {
        if (piece.empty()) continue;
        if (const AddedToken* a = added_by_content(piece)) {
            ids.push_back(a->id);
        } else {
            encode_plain(piece, ids);
        }
    }
    return ids;
}

std::vector<int32_t> Qwen2Tokenizer::encode_plain_text(std::string_view utf8) const {
    const std::string text = nfc_normalize(utf8);
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    if (!text.empty()) encode_plain(text, ids);
    return ids;
}

std::string Qwen2Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string bytes;
    for (int32_t id : ids) bytes += token_bytes(id);
    std::string out;
    out.reserve(bytes.size());
    utf8_decode_replace(bytes, false, out);
    return out;
}

std::string StreamDecoder::push(int32_t id) {
    pending_ += tok_.token_bytes(id);
    std::string out;
    const size_t used = utf8_decode_replace(pending_, true, out);
    pending_.erase(0, used);
    return out;
}

std::string StreamDecoder::finish() {
    std::string out;
    utf8_decode_replace(pending_, false, out);
    pending_.clear();
    return out;
}

}  // namespace lancet
