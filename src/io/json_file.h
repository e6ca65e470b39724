// Strict JSON reading for headers and configs: invalid UTF-8, syntax errors and duplicate keys
// fail.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace lancet {

// Parses `text`; errors are one line prefixed by `where`.
nlohmann::json parse_strict_json(std::string_view text, const std::string& where);

// Reads and parses a JSON file of at most 64 MiB that holds an object; errors name the file.
nlohmann::json read_json_file(const std::string& path);
// The same for any JSON value (an array of examples).
nlohmann::json read_json_value(const std::string& path);

// Config fields: an integer (double) key within [lo, hi]; a missing or null key is a one-line
// error naming `where` unless `def` is given, which is then returned.
int64_t json_get_int(const nlohmann::json& j, const char* key, int64_t lo, int64_t hi,
                     const std::string& where, const int64_t* def = nullptr);
double json_get_double(const nlohmann::json& j, const char* key, double lo, double hi,
                       const std::string& where, const double* def = nullptr);

}  // namespace lancet
