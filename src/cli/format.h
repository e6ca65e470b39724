// Number formatting for the commands' tables and summaries: one printf-style conversion of one
// double, "-" for NaN (a column with no value).
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace lancet::cli {

// fmt("%.3f", v): v formatted by the single conversion in f (at most 63 characters).
inline std::string fmt(const char* f, double v) {
    if (std::isnan(v)) return "-";
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

}  // namespace lancet::cli
