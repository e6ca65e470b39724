// Strict JSON reading for headers and configs: invalid UTF-8, syntax errors and duplicate keys
// fail.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace lancet {

// Parses `text`; errors are one line prefixed by `where`.
nlohmann::json parse_strict_json(std::string_view text, const std::string& where);

// Reads and parses a JSON file of at most 64 MiB; errors name the file.
nlohmann::json read_json_file(const std::string& path);

}  // namespace lancet
