// Media a client sends: base64 and data URLs (and, when the server allows it, local files inside
// one folder). Everything here throws lancet::Error with a message fit for a 400 answer.
#pragma once

#include <string>

namespace lancet::server {

// Standard base64 (RFC 4648, '=' padding optional; whitespace ignored) -> bytes. Error on any
// other character.
std::string base64_decode(const std::string& text, const std::string& what);
std::string base64_encode(const std::string& bytes);

// "data:<mime>;base64,<payload>" -> the payload's bytes; a string without the "data:" prefix is
// taken as plain base64. `mime`, when given, receives the declared type ("" for plain base64).
std::string decode_data_url(const std::string& url, const std::string& what,
                            std::string* mime = nullptr);

// A local path a request names, allowed only inside `root` (the server's --allow-local-files):
// "file://" stripped, resolved with symlinks (so "..", links and absolute paths cannot leave it),
// a regular file. Returns the resolved path. Error when `root` is empty (not allowed) or the path
// leaves it or does not exist.
std::string confined_local_file(const std::string& path, const std::string& root,
                                const std::string& what);

}  // namespace lancet::server
