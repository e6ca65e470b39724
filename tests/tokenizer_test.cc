// Tests of the Qwen2 tokenizer: BPE logic on a tiny synthetic vocab, HF ids on the real files, the
// UTF-8 replacement rule, streaming decode, and the `lancet tokenize` command.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {
namespace {

using test::TempDir;
using test::write_file;
using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------------------------
// A synthetic tokenizer folder, written by the test itself, so the BPE merge logic is tested
// without shared/.

// GPT-2's byte-to-unicode rule, restated here from its definition: bytes '!'..'~', 0xA1..0xAC
// and 0xAE..0xFF stand for themselves, the rest map in order to U+0100, U+0101, ...
std::string byte_char(int b) {
    const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    uint32_t cp = static_cast<uint32_t>(b);
    if (!direct) {
        cp = 256;
        for (int k = 0; k < b; ++k) {
            const bool d = (k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE);
            if (!d) ++cp;
        }
    }
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

struct SynthFiles {
    std::vector<std::string> merges;                  // "left right" lines in rank order
    std::vector<std::string> extra_tokens;            // vocab entries after the 256 byte tokens
    nlohmann::json added = nlohmann::json::object();  // added_tokens_decoder
    nlohmann::json config_extra = nlohmann::json::object();
};

// Vocab ids: byte b -> b (its byte-level character), then extra_tokens from 256 on.
void write_synth(const std::filesystem::path& dir, const SynthFiles& f) {
    std::filesystem::create_directories(dir);
    nlohmann::json vocab = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
    for (size_t i = 0; i < f.extra_tokens.size(); ++i)
        vocab[f.extra_tokens[i]] = static_cast<int>(256 + i);
    write_file(dir / "vocab.json", vocab.dump());
    std::string merges = "#version: 0.2\n";
    for (const std::string& m : f.merges) merges += m + "\n";
    write_file(dir / "merges.txt", merges);
    nlohmann::json config = f.config_extra;
    config["added_tokens_decoder"] = f.added;
    write_file(dir / "tokenizer_config.json", config.dump());
}

int32_t b(char c) { return static_cast<unsigned char>(c); }

TEST(TokenizerSynthetic, MergesApplyInRankOrder) {
    TempDir dir;
    SynthFiles f;
    // "b c" would fire first if merges were applied left to right; rank order makes "c d" win,
    // after which "b c" can no longer apply.
    f.merges = {"c d", "b c", "a b", "ab cd"};
    f.extra_tokens = {"cd", "bc", "ab", "abcd"};  // ids 256..259
    write_synth(dir.path(), f);
    const auto tok = Qwen2Tokenizer::load(dir.path().string());
    EXPECT_EQ(tok.size(), 260u);
    EXPECT_EQ(tok.encode("abcd"), (Ids{259}));
    // "bcd": "c d" (rank 1) beats "b c" (rank 2), leaving "b" + "cd".
    EXPECT_EQ(tok.encode("bcd"), (Ids{b('b'), 256}));
    EXPECT_EQ(tok.encode("bc"), (Ids{257}));
    EXPECT_EQ(tok.encode("abc"), (Ids{b('a'), 257}));  // "b c" outranks "a b"
    EXPECT_EQ(tok.encode("dcba"), (Ids{b('d'), b('c'), b('b'), b('a')}));
}

TEST(TokenizerSynthetic, RepeatedPairMergesLeftmostFirst) {
    TempDir dir;
    SynthFiles f;
    f.merges = {"a a", "aa aa"};
    f.extra_tokens = {"aa", "aaaa"};
    write_synth(dir.path(), f);
    const auto tok = Qwen2Tokenizer::load(dir.path().string());
    EXPECT_EQ(tok.encode("aaa"), (Ids{256, b('a')}));  // HF scans left to right: "aa a"
    EXPECT_EQ(tok.encode("aaaa"), (Ids{257}));
    EXPECT_EQ(tok.encode("aaaaa"), (Ids{257, b('a')}));
    EXPECT_EQ(tok.encode("aaaaaa"), (Ids{257, 256}));
}

TEST(TokenizerSynthetic, OnePassMergesEveryOccurrenceBeforeNewPairs) {
    TempDir dir;
    SynthFiles f;
    // "xy x" ranks before "x y". HF merges every "x y" of "xyxy" in one pass (-> xy xy) and only
    // then looks at new pairs; merging one "x y" and then jumping to the new, better ranked
    // "xy x" would give "xyx y" instead.
    f.merges = {"xy x", "x y"};
    f.extra_tokens = {"xyx", "xy"};  // 256, 257
    write_synth(dir.path(), f);
    const auto tok = Qwen2Tokenizer::load(dir.path().string());
    EXPECT_EQ(tok.encode("xyxy"), (Ids{257, 257}));
    EXPECT_EQ(tok.encode("xyx"), (Ids{256}));  // pass 1: xy x; pass 2: xyx
}

TEST(TokenizerSynthetic, SpacesAndWordSplit) {
    TempDir dir;
    SynthFiles f;
    const std::string G = byte_char(' ');  // "Ġ"
    f.merges = {G + " " + G, G + " w", "w o", G + "w o", G + "wo w"};
    f.extra_tokens = {G + G, G + "w", "wo", G + "wo", G + "wow"};  // 256..260
    write_synth(dir.path(), f);
    const auto tok = Qwen2Tokenizer::load(dir.path().string());
    // "  wow": the pattern keeps the last space on the word: "  " is cut into " " + " wow".
    EXPECT_EQ(tok.pre_tokenize("  wow"), (std::vector<std::string>{" ", " wow"}));
    EXPECT_EQ(tok.encode("  wow"), (Ids{b(' '), 260}));
    EXPECT_EQ(tok.encode("   wow"), (Ids{256, 260}));
    EXPECT_EQ(tok.encode("wow"), (Ids{258, b('w')}));
    EXPECT_EQ(tok.decode({256, 260}), "   wow");
    EXPECT_EQ(tok.id_to_token(259), G + "wo");
    EXPECT_EQ(tok.token_to_id(G + "wow"), 260);
    EXPECT_EQ(tok.token_to_id("nope"), -1);
}

TEST(TokenizerSynthetic, AddedTokensAndStripFlags) {
    TempDir dir;
    SynthFiles f;
    f.extra_tokens = {byte_char(' ') + "b"};  // 256
    f.merges = {byte_char(' ') + " b"};
    f.added["300"] = {{"content", "<L>"}, {"lstrip", true}, {"special", true}};
    f.added["301"] = {{"content", "<R>"}, {"rstrip", true}, {"special", true}};
    f.added["302"] = {{"content", "<LL>"}, {"special", false}};
    f.added["303"] = {{"content", "<W>"}, {"single_word", true}};
    f.config_extra["eos_token"] = "<R>";
    f.config_extra["pad_token"] = "<pad>";  // not an added token yet: appended after the last id
    write_synth(dir.path(), f);
    const auto tok = Qwen2Tokenizer::load(dir.path().string());
    EXPECT_EQ(tok.special_id("<L>"), 300);
    EXPECT_EQ(tok.eos_id(), 301);
    EXPECT_EQ(tok.pad_id(), 304);
    EXPECT_EQ(tok.bos_id(), -1);
    EXPECT_TRUE(tok.is_special(300));
    EXPECT_FALSE(tok.is_special(302));
    EXPECT_TRUE(tok.is_added(302));
    EXPECT_FALSE(tok.is_added(256));
    EXPECT_EQ(tok.size(), 256u + 1 + 5);
    // lstrip eats the spaces before "<L>"; without it " b" would keep its space.
    EXPECT_EQ(tok.encode("a  <L> b"), (Ids{b('a'), 300, 256}));
    // rstrip eats the whitespace after "<R>".
    EXPECT_EQ(tok.encode("a <R> \t b"), (Ids{b('a'), b(' '), 301, b('b')}));
    // Longest match: "<LL>" is not "<L>" + "L>".
    EXPECT_EQ(tok.encode("<LL>"), (Ids{302}));
    // single_word: "<W>" glued to a word is plain text, standing alone it is the token.
    EXPECT_EQ(tok.encode("a <W>"), (Ids{b('a'), b(' '), 303}));
    EXPECT_EQ(tok.encode("a<W>"), (Ids{b('a'), b('<'), b('W'), b('>')}));
    EXPECT_EQ(tok.decode({b('a'), 300, 256}), "a<L> b");
}

TEST(TokenizerSynthetic, LoadErrorsNameTheFile) {
    const auto expect_error = [](const std::filesystem::path& dir, const std::string& needle) {
        try {
            (void)Qwen2Tokenizer::load(dir.string());
            ADD_FAILURE() << "no error, expected one mentioning " << needle;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    TempDir dir;
    expect_error(dir / "absent", "does not exist");
    SynthFiles f;
    f.merges = {"a b"};
    f.extra_tokens = {"ab"};
    write_synth(dir.path(), f);
    std::filesystem::remove(dir / "merges.txt");
    expect_error(dir.path(), "merges.txt: file missing");
    write_synth(dir.path(), f);
    std::filesystem::remove(dir / "tokenizer_config.json");
    expect_error(dir.path(), "tokenizer_config.json: file missing");
    write_synth(dir.path(), f);
    write_file(dir / "vocab.json", "{\"a\": 0,");
    expect_error(dir.path(), "vocab.json: invalid JSON");
    write_file(dir / "vocab.json", "{\"a\": 0, \"b\": 0}");
    expect_error(dir.path(), "vocab.json: id 0 is used by both");
    // The strict parser of io/: a token listed twice is an error, not "the last one wins".
    write_file(dir / "vocab.json", "{\"a\": 0, \"b\": 1, \"a\": 2}");
    expect_error(dir.path(), "vocab.json: duplicate key \"a\"");
    write_file(dir / "vocab.json", "{\"a\": \"x\"}");
    expect_error(dir.path(), "vocab.json: id of token \"a\"");
    write_file(dir / "vocab.json", "{\"a\": 0}");
    expect_error(dir.path(), "vocab.json: missing the byte-level token");
    write_synth(dir.path(), f);
    write_file(dir / "merges.txt", "#version: 0.2\na b\nabc\n");
    expect_error(dir.path(), "merges.txt:3: expected two tokens");
    write_synth(dir.path(), f);
    write_file(dir / "tokenizer_config.json", "{\"added_tokens_decoder\": {\"x\": {}}}");
    expect_error(dir.path(), "tokenizer_config.json: added_tokens_decoder key \"x\"");
    write_file(dir / "tokenizer_config.json",
               "{\"added_tokens_decoder\": {\"5\": {\"content\": \"q\"}}}");
    expect_error(dir.path(), "tokenizer_config.json: added token \"q\" has id 5");
    // The id tables are sized by the largest id: 10^9 used to ask for ~60 GB ("out of memory").
    write_file(dir / "tokenizer_config.json",
               "{\"added_tokens_decoder\": {\"1000000000\": {\"content\": \"q\"}}}");
    expect_error(dir.path(), "added_tokens_decoder key \"1000000000\" is not a token id");
    write_synth(dir.path(), f);
    write_file(dir / "vocab.json", "{\"a\": 1000000000}");
    expect_error(dir.path(), "vocab.json: id of token \"a\" is not an integer in [0, 2^24)");
}

// ---------------------------------------------------------------------------------------------
// UTF-8 handling, independent of any vocab.

TEST(Utf8, ReplacementFollowsMaximalSubparts) {
    // Expected strings are Unicode 15 §3.9 "U+FFFD Substitution of Maximal Subparts" (Table 3-8
    // style), which Python's bytes.decode("utf-8", "replace") implements.
    const std::string R = "\xEF\xBF\xBD";
    const auto dec = [](const std::string& s) {
        std::string out;
        EXPECT_EQ(utf8_decode_replace(s, false, out), s.size());
        return out;
    };
    EXPECT_EQ(dec("a\xC3\xA9z"), "a\xC3\xA9z");
    EXPECT_EQ(dec("\xED\xA0\x80"), R + R + R);  // surrogate: ED allows 80..9F only
    EXPECT_EQ(dec("\xF0\x80\x80"), R + R + R);  // overlong: F0 needs 90..BF
    EXPECT_EQ(dec("\xE2\x82"
                  "a"),
              R + "a");                                 // truncated 3-byte sequence: one U+FFFD
    EXPECT_EQ(dec("\xC0\xAF"), R + R);                  // C0 never starts a sequence
    EXPECT_EQ(dec("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
    EXPECT_EQ(dec("\xF0\x9F\x98"), R);                  // cut emoji at the end
    EXPECT_EQ(dec(" \xFF "), " " + R + " ");
    // hold_tail keeps a valid but unfinished sequence for later.
    std::string out;
    EXPECT_EQ(utf8_decode_replace("ab\xF0\x9F\x98", true, out), 2u);
    EXPECT_EQ(out, "ab");
    out.clear();
    EXPECT_EQ(utf8_decode_replace("ab\xF0\x9F\x41", true, out), 5u);  // invalid: not held
    EXPECT_EQ(out, "ab" + R + "A");
}

TEST(Utf8, NfcComposesAndRejectsInvalid) {
    EXPECT_EQ(nfc_normalize("e\xCC\x81"), "\xC3\xA9");     // e + U+0301 -> U+00E9
    EXPECT_EQ(nfc_normalize("\xE2\x84\xAB"), "\xC3\x85");  // U+212B ANGSTROM -> U+00C5
    EXPECT_EQ(nfc_normalize("\xE1\x84\x80\xE1\x85\xA1"), "\xEA\xB0\x80");  // jamo -> U+AC00
    EXPECT_EQ(nfc_normalize(std::string("a\0b", 3)), std::string("a\0b", 3));
    try {
        (void)nfc_normalize("ok\xC3(");
        ADD_FAILURE() << "invalid UTF-8 accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("byte offset 2"), std::string::npos) << e.what();
    }
}

// ---------------------------------------------------------------------------------------------
// The real Qwen2 files from shared/data.

const Qwen2Tokenizer* real_tokenizer() {
    static std::unique_ptr<Qwen2Tokenizer> tok = []() -> std::unique_ptr<Qwen2Tokenizer> {
        const auto shared = test::shared_dir();
        if (shared.empty()) return nullptr;
        const auto dir = shared / "data" / "qwen2-tokenizer";
        if (!std::filesystem::exists(dir / "vocab.json")) return nullptr;
        return std::make_unique<Qwen2Tokenizer>(Qwen2Tokenizer::load(dir.string()));
    }();
    return tok.get();
}

#define REAL_TOKENIZER_OR_SKIP(name)               \
    const Qwen2Tokenizer* name = real_tokenizer(); \
    if (!name) GTEST_SKIP() << "shared/data/qwen2-tokenizer is not available"

TEST(TokenizerQwen2, SizeAndSpecialIdsFromTheFiles) {
    REAL_TOKENIZER_OR_SKIP(tok);
    EXPECT_EQ(tok->size(), 151665u);  // 151643 vocab entries + 22 added tokens (spec §1.4)
    // Every added token maps to the id tokenizer_config.json gives it.
    const auto dir = test::shared_dir() / "data" / "qwen2-tokenizer";
    const auto config = nlohmann::json::parse(test::read_file(dir / "tokenizer_config.json"));
    size_t n = 0;
    for (const auto& [key, v] : config["added_tokens_decoder"].items()) {
        const std::string content = v["content"];
        EXPECT_EQ(tok->special_id(content), std::stoi(key)) << content;
        EXPECT_EQ(tok->encode(content), (Ids{std::stoi(key)})) << content;
        EXPECT_EQ(tok->decode({std::stoi(key)}), content);
        ++n;
    }
    EXPECT_EQ(n, 22u);
    // The ids the Lance spec relies on (§1.4).
    EXPECT_EQ(tok->special_id("<|im_start|>"), 151644);
    EXPECT_EQ(tok->special_id("<|im_end|>"), 151645);
    EXPECT_EQ(tok->special_id("<|vision_start|>"), 151652);
    EXPECT_EQ(tok->special_id("<|vision_end|>"), 151653);
    EXPECT_EQ(tok->special_id("<|video_pad|>"), 151656);
    EXPECT_EQ(tok->special_id("<|endoftext|>"), 151643);
    EXPECT_EQ(tok->eos_id(), 151645);  // eos_token "<|im_end|>"
    EXPECT_EQ(tok->pad_id(), 151643);  // pad_token "<|endoftext|>"
    EXPECT_EQ(tok->bos_id(), -1);      // bos_token null
    EXPECT_TRUE(tok->is_special(151645));
    EXPECT_FALSE(tok->is_special(151657));  // <tool_call> is added but not special
    EXPECT_FALSE(tok->valid_id(151665));
    EXPECT_THROW((void)tok->special_id("<|nope|>"), Error);
    EXPECT_THROW((void)tok->decode({151665}), Error);
    EXPECT_THROW((void)tok->decode({-1}), Error);
}

// Expected ids below were looked up in vocab.json, with the merges that build them checked in
// merges.txt (line numbers given where it matters). The byte-level alphabet writes space as "Ġ"
// (U+0120), "\n" as "Ċ", "\t" as "ĉ".
TEST(TokenizerQwen2, EncodesLikeHuggingFace) {
    REAL_TOKENIZER_OR_SKIP(tok);
    struct Case {
        std::string text;
        Ids ids;
    };
    const std::vector<Case> cases = {
        // "Hello world" -> pieces "Hello" and " world". vocab.json: "Hello" 9707 (last merge
        // "H ello", merges.txt:9452), "Ġworld" 1879 ("Ġw orld", merges.txt:1624). The HF
        // Qwen2Tokenizer docstring gives the same [9707, 1879] and [21927, 1879].
        {"Hello world", {9707, 1879}},
        {" Hello world", {21927, 1879}},      // "ĠHello" 21927
        {"Hello world ", {9707, 1879, 220}},  // trailing space alone: "Ġ" 220
        // "a   b": \s+(?!\S) stops one space short, so the last space goes with "b":
        // "a" 64, "ĠĠ" 256 (merges.txt:2 "Ġ Ġ"), "Ġb" 293 (merges.txt:38 "Ġ b").
        {"a   b", {64, 256, 293}},
        // "  \n\n  b": \s*[\r\n]+ takes "  \n\n" ("ĠĠĊĊ" 18611, merges.txt:18356 "ĠĠ ĊĊ"), then
        // " " 220 and " b" 293.
        {"a  \n\n  b", {64, 18611, 220, 293}},
        {"x\n\ny", {87, 271, 88}},  // "ĊĊ" 271
        {"  ", {256}},
        // Digits one by one: "0".."9" are ids 15..24; ", " -> "," 11 then "Ġ" 220 before a digit.
        {"In 2024, 12345 people", {641, 220, 17, 15, 17, 19, 11, 220, 16, 17, 18, 19, 20, 1251}},
        // Contractions, case-insensitive: "'s" 594, "'RE" 94153, "'ve" 3003, "'M" 27603, "'ll"
        // 3278, "'d" 4172, "'t" 944.
        {"it's THEY'RE we've I'M you'll he'd can't",
         {275, 594, 62493, 94153, 582, 3003, 358, 27603, 498, 3278, 566, 4172, 646, 944}},
        {"Hello!!! What?!... (yes) -- ok",
         {9707, 12069, 3555, 25984, 1112, 320, 9693, 8, 1177, 5394}},
        // CJK: "你好" is one token (108386), the fullwidth comma "，" (U+FF0C) is "ï¼Į" 3837.
        {"你好，世界！", {108386, 3837, 99489, 6313}},
        {"안녕하세요", {126246, 144370, 91145}},
        // 😀 = F0 9F 98 80 -> "ðŁĺĢ" 141334 ("ðŁĺ Ģ", merges.txt:141079).
        {"😀", {141334}},
        // ZWJ (E2 80 8D) has no single token: "âĢ" 378 + "į" 235 ("âĢį" is not in vocab.json).
        {"👨\u200d👩\u200d👧", {145367, 378, 235, 145233, 378, 235, 145665}},
        {"def f(x):\n    return x**2\n", {750, 282, 2075, 982, 262, 470, 856, 334, 17, 198}},
        {"\t\tindent", {197, 197, 32840}},
        // Special tokens inside text are single ids.
        {"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
         {151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198}},
        // "ſ" (long s) case-folds to "s": "'ſ" is a contraction piece, BPE gives "'" 6 + "Å¿".
        {"x'ſ", {87, 6, 144815}},
        {"café", {924, 58858}},
    };
    for (const Case& c : cases) EXPECT_EQ(tok->encode(c.text), c.ids) << "text: " << c.text;
    EXPECT_EQ(tok->token_to_id("Hello"), 9707);
    EXPECT_EQ(tok->id_to_token(1879), "Ġworld");
    EXPECT_TRUE(tok->encode("").empty());
}

TEST(TokenizerQwen2, DecomposedTextEncodesLikeComposed) {
    REAL_TOKENIZER_OR_SKIP(tok);
    EXPECT_EQ(tok->encode("cafe\xCC\x81"), tok->encode("caf\xC3\xA9"));
    EXPECT_EQ(tok->encode("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), tok->encode("한"));
    EXPECT_THROW((void)tok->encode("bad \xFF byte"), Error);
}

TEST(TokenizerQwen2, PreTokenizerSplit) {
    REAL_TOKENIZER_OR_SKIP(tok);
    using V = std::vector<std::string>;
    EXPECT_EQ(tok->pre_tokenize("Hello  world\n\n x"), (V{"Hello", " ", " world", "\n\n", " x"}));
    EXPECT_EQ(tok->pre_tokenize("a1b23"), (V{"a", "1", "b", "2", "3"}));
    EXPECT_EQ(tok->pre_tokenize("He's"), (V{"He", "'s"}));
    EXPECT_EQ(tok->pre_tokenize("HE'S"), (V{"HE", "'S"}));
    EXPECT_EQ(tok->pre_tokenize("x'ſ"), (V{"x", "'ſ"}));
    EXPECT_EQ(tok->pre_tokenize("end.)\n\nNext"), (V{"end", ".)\n\n", "Next"}));
    EXPECT_EQ(tok->pre_tokenize("你好，世界"), (V{"你好", "，世界"}));
    // U+180E is not White_Space for Python's `regex` (PCRE2's plain \s would take it), so it
    // joins the punctuation run.
    EXPECT_EQ(tok->pre_tokenize("!\u180E"), (V{"!\u180E"}));
    EXPECT_EQ(tok->pre_tokenize("a\u3000\u3000b"), (V{"a", "\u3000", "\u3000b"}));
}

// Texts in many scripts; decode(encode(s)) must give back NFC(s) exactly.
std::vector<std::string> multilingual_corpus() {
    std::vector<std::string> base = {
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces, trailing spaces   ",
        "tabs\tand\t\tmore\ttabs\n\n\nnewlines\r\nCRLF\r\n",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
        "نص عربي للاختبار مع أرقام ١٢٣",
        "עברית עם ניקוד: שָׁלוֹם",
        "हिन्दी पाठ का परीक्षण: नमस्ते दुनिया",
        "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "日本語と中文混合テキスト、句読点。「引用」",
        "한국어 문장입니다. 띄어쓰기 포함!",
        "emoji 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣",
        "digits 3.14159 and 1,000,000 and ０１２ and ٣٤",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
        "def f(x):\n    return {'k': [1, 2, 3]}  # comment\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        "Zalgo: Z\xCC\x8D\xCC\x84"
        "a\xCC\xB4l\xCC\x80g\xCC\x95o and cafe\xCC\x81",
        "math: ∑ᵢ xᵢ² ≤ ∞, ∀ε>0 ∃δ",
        "\xC2\xA0nbsp\xE2\x80\x83"
        "em space\xE3\x80\x80ideographic",
    };
    // Deterministic mixtures of the above, cut at code point boundaries.
    std::mt19937 rng(7);
    std::vector<std::string> out = base;
    for (int k = 0; k < 40; ++k) {
        std::string s;
        for (int j = 0; j < 4; ++j) {
            const std::string& src = base[rng() % base.size()];
            size_t a = rng() % src.size(), len = 1 + rng() % 30;
            while (a > 0 && (static_cast<unsigned char>(src[a]) & 0xC0) == 0x80) --a;
            size_t e = std::min(src.size(), a + len);
            while (e < src.size() && (static_cast<unsigned char>(src[e]) & 0xC0) == 0x80) ++e;
            s += src.substr(a, e - a);
        }
        out.push_back(s);
    }
    return out;
}

TEST(TokenizerQwen2, RoundTripMultilingual) {
    REAL_TOKENIZER_OR_SKIP(tok);
    for (const std::string& s : multilingual_corpus()) {
        const Ids ids = tok->encode(s);
        EXPECT_EQ(tok->decode(ids), nfc_normalize(s)) << s;
        // Every id is a real token below size().
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && static_cast<size_t>(id) < tok->size());
    }
}

TEST(TokenizerQwen2, StreamingDecodeMatchesDecode) {
    REAL_TOKENIZER_OR_SKIP(tok);
    // 😀 split over two tokens: "ðŁĺ" (75360) holds F0 9F 98, "Ģ" (222) the last byte 80.
    StreamDecoder sd(*tok);
    EXPECT_EQ(sd.push(75360), "");
    EXPECT_EQ(sd.push(222), "😀");
    EXPECT_EQ(sd.push(75360), "");
    EXPECT_EQ(sd.finish(), "\xEF\xBF\xBD");  // cut sequence at the end: one U+FFFD
    EXPECT_EQ(tok->decode({75360, 220}), "\xEF\xBF\xBD ");
    for (const std::string& s : multilingual_corpus()) {
        const Ids ids = tok->encode(s);
        StreamDecoder stream(*tok);
        std::string joined;
        for (int32_t id : ids) {
            const std::string piece = stream.push(id);
            std::string check;
            utf8_decode_replace(piece, false, check);
            EXPECT_EQ(check, piece) << "a streamed piece is not whole UTF-8";
            joined += piece;
        }
        joined += stream.finish();
        EXPECT_EQ(joined, tok->decode(ids));
    }
}

TEST(TokenizerQwen2, LongInputsDoNotBreakTheSplit) {
    REAL_TOKENIZER_OR_SKIP(tok);
    // Long runs exercise the regex backtracking and the BPE heap on very long words.
    const std::string spaces(20000, ' '), letters(20000, 'x'), digits(5000, '7');
    const std::string text = spaces + letters + "\n" + digits + "!?" + spaces;
    const Ids ids = tok->encode(text);
    EXPECT_EQ(tok->decode(ids), text);
    EXPECT_EQ(tok->encode(digits).size(), digits.size());
}

// ---------------------------------------------------------------------------------------------
// The `lancet tokenize` command.

TEST(TokenizeCli, EncodesAndDecodesWithSyntheticVocab) {
    TempDir dir;
    SynthFiles f;
    f.merges = {"h i"};
    f.extra_tokens = {"hi"};
    f.added["300"] = {{"content", "<|e|>"}, {"special", true}};
    write_synth(dir / "tok", f);
    const std::string model = "--model " + (dir / "tok").string();
    auto r = test::run_lancet("tokenize " + model + " --text 'hi<|e|>!'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "[256, 300, 33]\n");
    write_file(dir / "in.txt", "h\ni");
    r = test::run_lancet("tokenize " + model + " --file " + (dir / "in.txt").string());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "[104, 10, 105]\n");
    r = test::run_lancet("tokenize " + model + " --decode --text '[256, 300, 33]'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "hi<|e|>!");
    r = test::run_lancet("tokenize " + model + " --decode --text '256,300 33'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "hi<|e|>!");
}

TEST(TokenizeCli, ErrorsAreOneLineAndExitOne) {
    TempDir dir;
    SynthFiles f;
    write_synth(dir / "tok", f);
    const std::string model = "--model " + (dir / "tok").string();
    const auto expect_fail = [](const test::RunResult& r, const std::string& needle) {
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_EQ(r.signal, 0);
        EXPECT_TRUE(r.out.empty()) << r.out;
        EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    };
    expect_fail(test::run_lancet("tokenize --model " + (dir / "absent").string() + " --text hi"),
                "tokenizer folder does not exist");
    std::filesystem::remove(dir / "tok" / "vocab.json");
    expect_fail(test::run_lancet("tokenize " + model + " --text hi"), "vocab.json: file missing");
    write_synth(dir / "tok", f);
    expect_fail(test::run_lancet("tokenize " + model + " --decode --text '[1, 999]'"),
                "token id 999 is out of range");
    expect_fail(test::run_lancet("tokenize " + model + " --decode --text '[1, x]'"),
                "is not a token id");
    expect_fail(test::run_lancet("tokenize " + model + " --decode --text '[-5]'"), "out of range");
    expect_fail(test::run_lancet("tokenize " + model + " --file " + (dir / "none").string()),
                "input file missing");
    expect_fail(test::run_lancet("tokenize " + model), "give --text or --file");
}

TEST(TokenizeCli, RealFilesJsonOutput) {
    if (!real_tokenizer()) GTEST_SKIP() << "shared/data/qwen2-tokenizer is not available";
    const auto dir = test::shared_dir() / "data" / "qwen2-tokenizer";
    const auto r = test::run_lancet("tokenize --model " + dir.string() + " --text 'Hello world'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out), nlohmann::json::parse("[9707, 1879]"));
}

}  // namespace
}  // namespace lancet
