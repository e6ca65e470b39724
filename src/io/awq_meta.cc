// Parsing and writing of the quantized checkpoints' meta JSON (format spec §1.1-§1.3).
#include "io/awq_meta.h"

#include "core/error.h"
#include "io/json_file.h"

namespace lancet {

using nlohmann::json;

std::string_view quant_format_name(QuantFormat f) {
    switch (f) {
        case QuantFormat::Int4:
            return "int4";
        case QuantFormat::Int5:
            return "int5";
        case QuantFormat::Nvfp4:
            return "nvfp4";
    }
    return "?";
}

namespace {

int positive_int(const json& j, const char* key, const std::string& where) {
    const auto it = j.find(key);
    if (it == j.end()) fail(where, ": missing \"", key, "\"");
    if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > (1 << 24))
        fail(where, ": \"", key, "\" must be a positive integer, got ", it->dump());
    return it->get<int>();
}

}  // namespace

AwqMeta AwqMeta::from_json(const json& j, bool is_nvfp4, const std::string& where) {
    if (!j.is_object()) fail(where, ": not a JSON object");
    AwqMeta m;
    if (is_nvfp4) {
        m.format = QuantFormat::Nvfp4;
        m.n_bit = 4;
        m.group_size = positive_int(j, "block_size", where);
    } else {
        m.n_bit = positive_int(j, "n_bit", where);
        if (m.n_bit == 4)
            m.format = QuantFormat::Int4;
        else if (m.n_bit == 5)
            m.format = QuantFormat::Int5;
        else
            fail(where, ": n_bit ", m.n_bit, " is not supported (4 or 5)");
        m.group_size = positive_int(j, "group_size", where);
    }
    if (auto it = j.find("scheme"); it != j.end() && it->is_string())
        m.scheme = it->get<std::string>();
    const auto pw = j.find("per_weight");
    if (pw == j.end() || !pw->is_object()) fail(where, ": missing \"per_weight\" object");
    for (auto it = pw->begin(); it != pw->end(); ++it) {
        const std::string at = where + ": per_weight \"" + it.key() + "\"";
        const json& e = it.value();
        if (!e.is_object()) fail(at, ": not an object");
        AwqWeightMeta w;
        const auto sh = e.find("shape");
        if (sh == e.end() || !sh->is_array() || sh->size() != 2 || !(*sh)[0].is_number_unsigned() ||
            !(*sh)[1].is_number_unsigned())
            fail(at, ": \"shape\" must be [out, in]");
        w.shape = {(*sh)[0].get<int64_t>(), (*sh)[1].get<int64_t>()};
        if (w.shape[0] <= 0 || w.shape[1] <= 0 || w.shape[0] > (1 << 24) || w.shape[1] > (1 << 24))
            fail(at, ": shape ", sh->dump(), " is absurd");
        w.group_size =
            is_nvfp4
                ? (e.contains("block_size") ? positive_int(e, "block_size", at) : m.group_size)
                : (e.contains("group_size") ? positive_int(e, "group_size", at) : m.group_size);
        if (w.shape[1] % w.group_size != 0)
            fail(at, ": group size ", w.group_size, " does not divide in = ", w.shape[1]);
        if (m.format != QuantFormat::Int5 && w.shape[1] % 2 != 0)
            fail(at, ": in = ", w.shape[1], " is odd; 4-bit codes pack two per byte");
        if (auto s = e.find("scheme"); s != e.end() && s->is_string())
            w.scheme = s->get<std::string>();
        if (auto nb = e.find("n_bit");
            !is_nvfp4 && nb != e.end() && nb->is_number_integer() && nb->get<int>() != m.n_bit)
            fail(at, ": n_bit ", nb->get<int>(), " differs from the file's ", m.n_bit);
        m.per_weight.emplace(it.key(), std::move(w));
    }
    for (auto it = j.begin(); it != j.end(); ++it)
        if (it.key() != "per_weight" && it.key() != "n_bit" && it.key() != "group_size" &&
            it.key() != "block_size" && it.key() != "scheme")
            m.extra[it.key()] = it.value();
    return m;
}

AwqMeta AwqMeta::load(const std::string& path, bool is_nvfp4) {
    return from_json(read_json_file(path), is_nvfp4, path);
}

json AwqMeta::to_json() const {
    json j = extra;
    if (format == QuantFormat::Nvfp4) {
        j["block_size"] = group_size;
    } else {
        j["n_bit"] = n_bit;
        j["group_size"] = group_size;
    }
    j["scheme"] = scheme;
    json pw = json::object();
    for (const auto& [name, w] : per_weight) {
        json e = {{"shape", w.shape}, {"scheme", w.scheme}};
        if (format == QuantFormat::Nvfp4) {
            e["block_size"] = w.group_size;
        } else {
            e["n_bit"] = n_bit;
            e["group_size"] = w.group_size;
        }
        pw[name] = e;
    }
    j["per_weight"] = pw;
    return j;
}

}  // namespace lancet
