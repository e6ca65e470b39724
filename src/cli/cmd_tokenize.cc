// `lancet tokenize`: text to Qwen2 token ids (a JSON array), or ids back to text with --decode.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace {

struct TokenizeArgs {
    std::string model, text, file;
    bool decode = false;
    bool from_file = false;
};

std::string read_input_file(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) fail(path, ": input file missing");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open");
    std::ostringstream os;
    os << in.rdbuf();
    return os.str();
}

// Ids as a JSON array ("[1, 2]") or separated by commas and/or whitespace ("1,2" or "1 2").
std::vector<int64_t> parse_ids(const std::string& s) {
    std::string body = s;
    const size_t first = body.find_first_not_of(" \t\r\n");
    const size_t last = body.find_last_not_of(" \t\r\n");
    if (first == std::string::npos) return {};
    body = body.substr(first, last - first + 1);
    if (body.front() == '[') {
        if (body.back() != ']') fail("ids: a list that opens with '[' must close with ']'");
        body = body.substr(1, body.size() - 2);
    }
    std::vector<int64_t> ids;
    size_t i = 0;
    bool need_sep = false;
    while (i < body.size()) {
        const char c = body[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            ++i;
            continue;
        }
        if (c == ',') {
            if (!need_sep) fail("ids: unexpected ',' at character ", i + 1);
            need_sep = false;
            ++i;
            continue;
        }
        size_t j = i;
        if (body[j] == '-') ++j;
        const size_t digits = j;
        while (j < body.size() && body[j] >= '0' && body[j] <= '9') ++j;
        if (j == digits || j - digits > 12)
            fail("ids: \"", body.substr(i, std::min<size_t>(20, body.size() - i)),
                 "\" is not a token id (character ", i + 1, ")");
        ids.push_back(std::stoll(body.substr(i, j - i)));
        i = j;
        need_sep = true;  // commas are optional, but two in a row are an error
    }
    return ids;
}

void run_tokenize(const TokenizeArgs& a) {
    const std::string input = a.from_file ? read_input_file(a.file) : a.text;
    using Clock = std::chrono::steady_clock;
    const auto ms_since = [](Clock::time_point t0) {
        return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    };
    const auto t_load = Clock::now();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(a.model);
    log_debug("tokenize: loaded ", tok.size(), " tokens in ", ms_since(t_load), " ms");
    if (a.decode) {
        std::vector<int32_t> ids;
        for (int64_t id : parse_ids(input)) {
            if (id < 0 || id > INT32_MAX || !tok.valid_id(static_cast<int32_t>(id)))
                fail("tokenize: token id ", id, " is out of range [0, ", tok.size(), ")");
            ids.push_back(static_cast<int32_t>(id));
        }
        const std::string text = tok.decode(ids);
        // Exactly the decoded text, no newline added, so a round trip reproduces the input.
        std::fwrite(text.data(), 1, text.size(), stdout);
        return;
    }
    const auto t_encode = Clock::now();
    const std::vector<int32_t> ids = tok.encode(input);
    const double encode_ms = ms_since(t_encode);
    log_debug("tokenize: ", input.size(), " bytes -> ", ids.size(), " tokens in ", encode_ms,
              " ms (", encode_ms > 0 ? ids.size() / (encode_ms / 1000.0) : 0.0, " tokens/s)");
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(ids[i]);
    }
    out += "]\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

void add_tokenize(CLI::App& app) {
    auto args = std::make_shared<TokenizeArgs>();
    CLI::App* cmd = app.add_subcommand(
        "tokenize", "Encode text to Qwen2 token ids (JSON array), or decode ids to text");
    cmd->add_option("--model", args->model,
                    "Folder with vocab.json, merges.txt and tokenizer_config.json")
        ->required();
    auto* text = cmd->add_option("--text", args->text, "The input given inline");
    auto* file = cmd->add_option("--file", args->file, "Read the input from this file");
    text->excludes(file);
    cmd->add_flag("--decode", args->decode,
                  "The input is ids (JSON array, or comma/space separated); print the text as is, "
                  "with no newline added");
    cmd->callback([args, text, file] {
        if (text->count() == 0 && file->count() == 0) fail("tokenize: give --text or --file");
        args->from_file = file->count() > 0;
        run_tokenize(*args);
    });
}

}  // namespace lancet::cli
