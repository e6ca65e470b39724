// Implementation of strict JSON parsing.
#include "io/json_file.h"

#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace lancet {

using nlohmann::json;

json parse_strict_json(std::string_view text, const std::string& where) {
    // nlohmann silently keeps the last of two equal keys; a callback sees every key first.
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
    if (!duplicate.empty()) fail(where, ": duplicate key \"", duplicate, "\"");
    return j;
}

json read_json_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    if (text.size() > (64u << 20)) fail(path, ": absurdly large for a JSON file");
    json j = parse_strict_json(text, path);
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
