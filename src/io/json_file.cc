// Implementation of strict JSON parsing.
#include "io/json_file.h"

#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace lancet {

using nlohmann::json;

namespace {

// The first key repeated within one object of `text` (already known to parse), or "".
std::string first_duplicate_key(std::string_view text) {
    std::vector<std::set<std::string>> keys;
    std::string duplicate;
    auto cb = [&](int, json::parse_event_t ev, json& parsed) {
        if (ev == json::parse_event_t::object_start) {
            keys.emplace_back();
        } else if (ev == json::parse_event_t::object_end) {
            if (!keys.empty()) keys.pop_back();
        } else if (ev == json::parse_event_t::key && !keys.empty()) {
            const std::string k = parsed.get<std::string>();
            if (!keys.back().insert(k).second && duplicate.empty()) duplicate = k;
        }
        return true;
    };
    const json ignored = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
    (void)ignored;
    return duplicate;
}

}  // namespace

json parse_strict_json(std::string_view text, const std::string& where) {
    // nlohmann silently keeps the last of two equal keys. Counting the keys of each object and
    // comparing with its size when it closes finds that cheaply (a tokenizer's vocab.json has
    // 150k keys); only a file that has a duplicate is parsed again to name it.
    std::vector<size_t> counts;
    bool duplicate = false;
    auto cb = [&](int, json::parse_event_t ev, json& parsed) {
        if (ev == json::parse_event_t::object_start) {
            counts.push_back(0);
        } else if (ev == json::parse_event_t::key && !counts.empty()) {
            ++counts.back();
        } else if (ev == json::parse_event_t::object_end && !counts.empty()) {
            if (parsed.size() != counts.back()) duplicate = true;
            counts.pop_back();
        }
        return true;
    };
    json j;
    try {
        j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true);
    } catch (const json::exception& e) {
        std::string msg = e.what();
        // nlohmann prefixes "[json.exception.parse_error.101] "; keep the readable part.
        const auto p = msg.find("] ");
        if (p != std::string::npos) msg = msg.substr(p + 2);
        fail(where, ": invalid JSON: ", msg);
    }
    if (duplicate) fail(where, ": duplicate key \"", first_duplicate_key(text), "\"");
    return j;
}

json read_json_value(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    if (text.size() > (64u << 20)) fail(path, ": absurdly large for a JSON file");
    return parse_strict_json(text, path);
}

json read_json_file(const std::string& path) {
    json j = read_json_value(path);
    if (!j.is_object()) fail(path, ": not a JSON object");
    return j;
}

// Reads an integer key within [lo, hi]; a missing key is an error unless `def` is given.
int64_t json_get_int(const nlohmann::json& j, const char* key, int64_t lo, int64_t hi,
                     const std::string& where, const int64_t* def) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        if (def) return *def;
        fail(where, ": missing key \"", key, "\"");
    }
    if (!it->is_number_integer())
        fail(where, ": \"", key, "\" must be an integer, got ", it->dump());
    const int64_t v = it->get<int64_t>();
    if (v < lo || v > hi)
        fail(where, ": \"", key, "\" = ", v, " is out of range [", lo, ", ", hi, "]");
    return v;
}

double json_get_double(const nlohmann::json& j, const char* key, double lo, double hi,
                       const std::string& where, const double* def) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        if (def) return *def;
        fail(where, ": missing key \"", key, "\"");
    }
    if (!it->is_number()) fail(where, ": \"", key, "\" must be a number, got ", it->dump());
    const double v = it->get<double>();
    if (!(v >= lo && v <= hi))
        fail(where, ": \"", key, "\" = ", v, " is out of range [", lo, ", ", hi, "]");
    return v;
}

}  // namespace lancet
