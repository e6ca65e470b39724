// safetensors reader/writer: round trips, and a corpus of broken headers that must each fail
// cleanly.
#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "core/numeric.h"
#include "test_util.h"

namespace lancet {
namespace {

using test::TempDir;

std::string le64(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
    return s;
}

// A file from a literal header and a data section of `data_bytes` non-zero bytes.
std::string make_file(const std::string& header, size_t data_bytes) {
    std::string data(data_bytes, '\0');
    for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i * 7 + 1);
    return le64(header.size()) + header + data;
}

// Expects parsing to throw an Error containing every fragment.
void expect_error(const std::string& bytes, std::initializer_list<const char*> fragments) {
    std::span<const uint8_t> span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    try {
        parse_safetensors_header(span, "f.safetensors");
        FAIL() << "no error for header " << bytes.substr(8, 200);
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("f.safetensors"), std::string::npos) << msg;
        for (const char* f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    }
}

TEST(Safetensors, WriterReaderRoundTripEveryDtype) {
    TempDir dir;
    const std::string path = dir / "a.safetensors";
    std::mt19937 rng(7);
    struct T {
        std::string name;
        DType dt;
        Shape shape;
        std::string bytes;
    };
    std::vector<T> ts;
    const DType all[] = {DType::F64, DType::F32,  DType::F16,     DType::BF16,
                         DType::I64, DType::I32,  DType::I16,     DType::I8,
                         DType::U8,  DType::BOOL, DType::F8_E4M3, DType::F8_E5M2};
    int k = 0;
    for (DType dt : all) {
        const Shape shape = {3, 1 + k % 4, 5};
        std::string b(static_cast<size_t>(shape_numel(shape)) * dtype_size(dt), '\0');
        for (auto& c : b) c = static_cast<char>(1 + rng() % 250);
        ts.push_back({"t." + std::string(dtype_name(dt)), dt, shape, b});
        ++k;
    }
    ts.push_back({"scalar", DType::F32, {}, std::string("\x00\x00\x80\x3f", 4)});
    ts.push_back({"empty", DType::F32, {0, 4}, ""});
    {
        SafetensorsWriter w(path);
        for (const T& t : ts) w.add(t.name, t.dt, t.shape);
        w.set_metadata("format", "pt");
        w.begin();
        for (const T& t : ts) {
            // Exercise chunked appends on one tensor.
            if (t.bytes.size() > 10) {
                w.append(t.bytes.data(), 10);
                w.append(t.bytes.data() + 10, t.bytes.size() - 10);
            } else {
                w.write(t.name, t.bytes.data(), t.bytes.size());
            }
        }
        w.finish();
    }
    auto ck = Checkpoint::open(path);
    ASSERT_EQ(ck->names().size(), ts.size());
    EXPECT_EQ(ck->metadata().at("format"), "pt");
    for (const T& t : ts) {
        const TensorView v = ck->view(t.name);
        EXPECT_EQ(v.dtype, t.dt) << t.name;
        EXPECT_EQ(v.shape, t.shape) << t.name;
        ASSERT_EQ(v.nbytes, t.bytes.size()) << t.name;
        EXPECT_EQ(std::memcmp(v.data, t.bytes.data(), v.nbytes), 0) << t.name;
    }
    EXPECT_EQ(to_f32(ck->view("scalar"))[0], 1.0f);
    // The data section starts 8-byte aligned.
    const std::string raw = test::read_file(path);
    uint64_t n;
    std::memcpy(&n, raw.data(), 8);
    EXPECT_EQ((8 + n) % 8, 0u);
    // No temporary file is left behind.
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

TEST(Safetensors, ConvertsToF32) {
    TempDir dir;
    const std::string path = dir / "c.safetensors";
    const float vals[4] = {1.5f, -2.25f, 3e-3f, 7.0f};
    uint16_t bf[4], hf[4];
    for (int i = 0; i < 4; ++i) {
        bf[i] = f32_to_bf16(vals[i]);
        hf[i] = f32_to_f16(vals[i]);
    }
    SafetensorsWriter w(path);
    w.add("bf", DType::BF16, {4});
    w.add("hf", DType::F16, {2, 2});
    w.write("bf", bf, sizeof bf);
    w.write("hf", hf, sizeof hf);
    w.finish();
    auto ck = Checkpoint::open(path);
    const auto b = to_f32(ck->view("bf")), h = to_f32(ck->view("hf"));
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(b[i], round_bf16(vals[i]));
        EXPECT_EQ(h[i], f16_to_f32(f32_to_f16(vals[i])));
    }
}

TEST(Safetensors, WriterRemovesTemporaryOnAbandon) {
    TempDir dir;
    {
        SafetensorsWriter w(dir / "x.safetensors");
        w.add("a", DType::F32, {4});
        w.add("b", DType::F32, {4});
        const float v[4] = {1, 2, 3, 4};
        w.write("a", v, sizeof v);
        EXPECT_THROW(w.write("a", v, sizeof v), Error);  // out of order
        EXPECT_THROW(w.finish(), Error);                 // "b" never written
    }
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0);
}

TEST(Safetensors, BrokenHeadersFailWithOneClearLine) {
    const std::string ok = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
    // Sanity: the template itself parses.
    {
        const std::string f = make_file(ok, 16);
        EXPECT_NO_THROW(parse_safetensors_header(
            {reinterpret_cast<const uint8_t*>(f.data()), f.size()}, "f.safetensors"));
    }
    expect_error(std::string("\x05\x00\x00", 3), {"truncated"});
    expect_error(le64(1000) + "{}", {"past the end"});
    expect_error(le64(1ull << 40) + std::string(64, ' '), {"limit"});
    expect_error(le64(0xffffffffffffffffull), {"limit"});
    expect_error(make_file(ok, 8), {"\"a\"", "past the end of the data section"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})", 16),
                 {"invalid JSON"});
    expect_error(make_file(R"([1,2])", 0), {"not a JSON object"});
    expect_error(make_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}})", 1),
                 {"unknown dtype", "Q4"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}})", 24),
                 {"\"a\"", "[3, 2]", "24 bytes"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                 {"shape"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
                 {"shape"});
    expect_error(
        make_file(
            R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
        {"overflows"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
                 {"reversed"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
                 {"data_offsets"});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           12),
                 {"overlap", "\"a\"", "\"b\""});
    expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                           16),
                 {"duplicate key", "\"a\""});
    expect_error(make_file(R"({"__metadata__":{"k":1}})", 0), {"__metadata__"});
    expect_error(
        make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\u00e9\xff":1})", 4),
        {"invalid JSON"});
    expect_error(make_file(R"({"a":7})", 0), {"not an object"});
}

TEST(Safetensors, FifoIsRefusedNotWaitedOn) {
    // open(2) on a FIFO blocks until a writer appears; `lancet inspect fifo` used to hang.
    TempDir dir;
    const std::string p = (dir / "f.safetensors").string();
    ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
    try {
        SafetensorsFile f(p);
        FAIL() << "a FIFO opened";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
}

TEST(Safetensors, CorruptedFilesNeverCrash) {
    TempDir dir;
    const std::string path = dir / "g.safetensors";
    {
        SafetensorsWriter w(path);
        std::vector<float> v(64);
        for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f + static_cast<float>(i);
        for (int t = 0; t < 5; ++t) w.add("t" + std::to_string(t), DType::F32, {8, 8});
        for (int t = 0; t < 5; ++t) w.write("t" + std::to_string(t), v.data(), v.size() * 4);
        w.finish();
    }
    const std::string good = test::read_file(path);
    std::mt19937 rng(3);
    int parsed = 0, rejected = 0;
    for (int i = 0; i < 3000; ++i) {
        std::string bad = good;
        if (i % 3 == 0) {
            bad.resize(rng() % good.size());
        } else {
            const int flips = 1 + static_cast<int>(rng() % 4);
            for (int f = 0; f < flips; ++f) {
                // Aim most flips at the length and the header, where the parser works.
                const size_t pos =
                    (rng() % 4) ? rng() % std::min<size_t>(good.size(), 400) : rng() % good.size();
                bad[pos] = static_cast<char>(bad[pos] ^ (1 << (rng() % 8)));
            }
        }
        try {
            parse_safetensors_header({reinterpret_cast<const uint8_t*>(bad.data()), bad.size()},
                                     "g");
            ++parsed;
        } catch (const Error&) {
            ++rejected;
        }
    }
    EXPECT_GT(rejected, 1000);
    EXPECT_GT(parsed, 0);
}

TEST(Safetensors, ShardedIndex) {
    TempDir dir;
    const float v[2] = {1.25f, -3.5f};
    for (int s = 0; s < 2; ++s) {
        SafetensorsWriter w(dir / ("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors"));
        w.add("w" + std::to_string(s), DType::F32, {2});
        w.write("w" + std::to_string(s), v, sizeof v);
        w.finish();
    }
    const std::string index = R"({"metadata":{"total_size":16},"weight_map":{)"
                              R"("w0":"model-00001-of-00002.safetensors",)"
                              R"("w1":"model-00002-of-00002.safetensors"}})";
    test::write_file(dir / "model.safetensors.index.json", index);
    auto ck = Checkpoint::open(dir.path().string());
    EXPECT_EQ(ck->names(), (std::vector<std::string>{"w0", "w1"}));
    EXPECT_EQ(to_f32(ck->view("w1"))[1], -3.5f);
    EXPECT_NE(ck->file_of("w1").find("00002"), std::string::npos);
    EXPECT_THROW(ck->view("w2"), Error);

    auto expect_index_error = [&](const std::string& idx, const char* fragment) {
        test::write_file(dir / "model.safetensors.index.json", idx);
        try {
            Checkpoint::open(dir.path().string());
            FAIL() << "no error for " << idx;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
        }
    };
    expect_index_error(R"({"weight_map":{"w0":"model-00001-of-00002.safetensors",)"
                       R"("w1":"model-00003-of-00003.safetensors"}})",
                       "missing shard");
    expect_index_error(R"({"weight_map":{"w0":"../model-00001-of-00002.safetensors"}})",
                       "invalid shard");
    expect_index_error(R"({"weight_map":{"w0":"model-00002-of-00002.safetensors",)"
                       R"("w1":"model-00002-of-00002.safetensors"}})",
                       "is not in it");
    {
        SafetensorsWriter w(dir / "extra.safetensors");
        w.add("e0", DType::F32, {2});
        w.add("e1", DType::F32, {2});
        w.write("e0", v, sizeof v);
        w.write("e1", v, sizeof v);
        w.finish();
    }
    expect_index_error(R"({"weight_map":{"e0":"extra.safetensors"}})", "not listed in the index");
    expect_index_error(R"({"metadata":{}})", "weight_map");
}

}  // namespace
}  // namespace lancet
