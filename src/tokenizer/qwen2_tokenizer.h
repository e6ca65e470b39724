// Qwen2Tokenizer: the byte-level BPE tokenizer of Qwen2 (vocab.json + merges.txt +
// tokenizer_config.json), reproducing Hugging Face's slow `Qwen2Tokenizer` encode and decode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lancet {

class Qwen2Tokenizer {
  public:
    // Reads vocab.json, merges.txt and tokenizer_config.json from `dir`. Throws lancet::Error
    // naming the missing or malformed file.
    static Qwen2Tokenizer load(const std::string& dir);

    Qwen2Tokenizer(Qwen2Tokenizer&&) noexcept;
    Qwen2Tokenizer& operator=(Qwen2Tokenizer&&) noexcept;
    ~Qwen2Tokenizer();

    // UTF-8 text to ids, as HF `tokenizer(text)["input_ids"]`: NFC, added tokens matched first, the
    // Qwen2 pre-tokenizer split, byte-level BPE. Throws lancet::Error on invalid UTF-8.
    std::vector<int32_t> encode(std::string_view utf8) const;
    // Untrusted text to ids: NFC and byte-level BPE with no added-token matching, so a string such
    // as "<|im_start|>" becomes the ids of its characters, never the special token (a client cannot
    // forge turns or vision blocks). Throws lancet::Error on invalid UTF-8.
    std::vector<int32_t> encode_plain_text(std::string_view utf8) const;

    // Ids to text, as HF `decode(ids)`: byte-level inverse, added tokens as their text, invalid
    // UTF-8 replaced by U+FFFD (one per maximal invalid subpart, like Python's errors="replace").
    // Throws lancet::Error for an id that names no token.
    std::string decode(const std::vector<int32_t>& ids) const;

    // The raw bytes one token stands for (an added token: its text). A byte-level token may hold a
    // part of a UTF-8 sequence only; StreamDecoder turns a run of these into whole characters.
    const std::string& token_bytes(int32_t id) const;

    // Number of distinct tokens, vocab plus added tokens: HF `len(tokenizer)`.
    size_t size() const { return size_; }
    // True when `id` names a token (vocab entry or added token).
    bool valid_id(int32_t id) const;

    // A token's string as HF spells it: a vocab entry in the byte-level alphabet ("Ġworld"), an
    // added token as its text. token_to_id returns -1 for an unknown string; id_to_token throws.
    int32_t token_to_id(std::string_view token) const;
    const std::string& id_to_token(int32_t id) const;

    // The id of an added token such as "<|im_start|>"; throws lancet::Error when there is none.
    int32_t special_id(std::string_view text) const;
    bool is_added(int32_t id) const;
    bool is_special(int32_t id) const;
    // Ids of the tokens tokenizer_config.json names as eos/pad/bos, or -1 when it names none.
    int32_t eos_id() const { return eos_id_; }
    int32_t pad_id() const { return pad_id_; }
    int32_t bos_id() const { return bos_id_; }

    // Pre-tokenizer only: the pieces the Qwen2 pattern cuts NFC text into (no added-token
    // handling). Exposed for tests.
    std::vector<std::string> pre_tokenize(std::string_view nfc_text) const;

  private:
    Qwen2Tokenizer();

    struct AddedToken {
        std::string content;
        int32_t id = -1;
        bool lstrip = false, rstrip = false, single_word = false, special = false;
    };
    struct Merge {
        int32_t rank;
        int32_t result;  // symbol id of the merged string
    };
    struct Regex;
    struct Cache;

    void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
    void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
    const AddedToken* added_by_content(std::string_view s) const;

    // Symbol ids are vocab ids for vocab strings, then extra ids for strings that only appear
    // inside merges.txt; symbol_out_ maps a symbol to the id emitted for it (-1: not in vocab).
    std::vector<int32_t> symbol_out_;
    std::unordered_map<uint64_t, Merge> merges_;  // (left symbol << 32 | right symbol)
    int32_t byte_symbol_[256] = {};

    std::vector<std::string> id_token_;  // by id: HF token string ("" for an id without token)
    std::vector<std::string> id_bytes_;  // by id: raw bytes
    std::vector<uint8_t> id_kind_;       // by id: 0 none, 1 vocab, 2 added, 3 added special
    std::unordered_map<std::string, int32_t> token_ids_;
    std::vector<AddedToken> added_;
    // Added tokens grouped by their first byte, longest first, for leftmost-longest matching.
    std::vector<std::vector<size_t>> added_by_first_byte_;
    size_t size_ = 0;
    int32_t eos_id_ = -1, pad_id_ = -1, bos_id_ = -1;

    std::unique_ptr<Regex> regex_;
    std::unique_ptr<Cache> cache_;
};

// Turns a stream of token ids into UTF-8 text as soon as each character is complete. A token that
// ends inside a UTF-8 sequence is held back until the next tokens complete it; the concatenation of
// every push() and finish() equals Qwen2Tokenizer::decode of all the ids.
class StreamDecoder {
  public:
    explicit StreamDecoder(const Qwen2Tokenizer& tok) : tok_(tok) {}
    // The text that became complete with this token (maybe empty). Throws on an invalid id.
    std::string push(int32_t id);
    // The held-back bytes, with U+FFFD for an unfinished sequence; resets the decoder.
    std::string finish();

  private:
    const Qwen2Tokenizer& tok_;
    std::string pending_;
};

// Appends `bytes` decoded as UTF-8 to `out`, each maximal invalid subpart replaced by U+FFFD (the
// rule of Python's bytes.decode("utf-8", "replace")). With `hold_tail`, an unfinished but so far
// valid sequence at the end is not decoded; the return value is the number of bytes consumed.
size_t utf8_decode_replace(std::string_view bytes, bool hold_tail, std::string& out);

// NFC normalisation (utf8proc). Throws lancet::Error naming the byte offset of invalid UTF-8.
std::string nfc_normalize(std::string_view utf8);

}  // namespace lancet
