// Tests PthFile, the restricted unpickler and ZipReader on torch-layout fixtures and hostile input.
#include "io/pth.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "io/torch_pickle.h"
#include "io/zip_reader.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;  // "...\x00..."s keeps embedded NULs

fs::path fixture(const std::string& name) { return fs::path(LANCET_TEST_DATA_DIR) / "pth" / name; }

std::vector<uint8_t> load(const std::string& name) {
    const std::string s = test::read_file(fixture(name));
    EXPECT_FALSE(s.empty()) << "missing fixture " << name;
    return {s.begin(), s.end()};
}

std::span<const uint8_t> span_of(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

using test::error_of;

// --- the value formulas of tools/make_pth_fixtures.py -----------------------------------------

// The stored little-endian bytes of element i of a storage with seed k.
std::vector<uint8_t> element(DType t, int64_t k, int64_t i) {
    uint64_t bits = 0;
    const double v = ((i * 37 + k * 11) % 101 - 50.5) / 7.0;
    const float f = static_cast<float>(v);
    switch (t) {
        case DType::F32:
            bits = f32_bits(f);
            break;
        case DType::F64: {
            std::memcpy(&bits, &v, 8);
            break;
        }
        case DType::F16:
            bits = f32_to_f16(f);
            break;
        case DType::BF16:
            bits = f32_to_bf16(f);
            break;
        case DType::I64:
            bits =
                static_cast<uint64_t>(((i * 2654435761LL + k * 97) % 1000003 - 500001) * 1234567);
            break;
        case DType::I32:
            bits = static_cast<uint32_t>((i * 7919 + k * 13) % 200003 - 100001);
            break;
        case DType::I16:
            bits = static_cast<uint16_t>((i * 31 + k * 7) % 60001 - 30000);
            break;
        case DType::I8:
            bits = static_cast<uint8_t>((i * 13 + k * 5) % 255 - 127);
            break;
        case DType::U8:
            bits = static_cast<uint8_t>((i * 29 + k * 3) % 256);
            break;
        case DType::BOOL:
            bits = (i * 5 + k) % 3 != 0 ? 1 : 0;
            break;
        default:
            ADD_FAILURE() << "no formula for " << dtype_name(t);
    }
    std::vector<uint8_t> out(dtype_size(t));
    std::memcpy(out.data(), &bits, out.size());  // little-endian host
    return out;
}

struct Expect {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape, strides;
    uint64_t offset;
    int64_t seed;
    std::string key;
};

const std::vector<Expect>& state_dict_expect() {
    static const std::vector<Expect> e = {
        {"conv.weight", DType::F32, {4, 3, 3, 3, 3}, {81, 27, 9, 3, 1}, 0, 1, "0"},
        {"conv.bias", DType::F32, {4}, {1}, 0, 2, "1"},
        {"norm.gamma", DType::F16, {4, 1, 1, 1}, {1, 1, 1, 1}, 0, 3, "2"},
        {"proj.weight", DType::BF16, {6, 5}, {5, 1}, 0, 4, "3"},
        {"scale", DType::F32, {}, {}, 0, 5, "4"},
        {"steps", DType::I64, {3}, {1}, 0, 6, "5"},
        {"mask", DType::BOOL, {2, 3}, {3, 1}, 0, 7, "6"},
        {"bytes", DType::U8, {7}, {1}, 0, 8, "7"},
        {"ints", DType::I32, {5}, {1}, 0, 9, "8"},
        {"f64", DType::F64, {2, 2}, {2, 1}, 0, 10, "9"},
        {"i16", DType::I16, {3}, {1}, 0, 11, "10"},
        {"i8", DType::I8, {4}, {1}, 0, 12, "11"},
        {"shared.a", DType::F32, {2, 3}, {3, 1}, 0, 13, "12"},
        {"shared.b", DType::F32, {4}, {1}, 6, 13, "12"},
        {"shared.t", DType::F32, {3, 2}, {1, 3}, 10, 13, "12"},
        {"empty", DType::F32, {0, 3}, {3, 1}, 0, 14, "13"},
    };
    return e;
}

const std::vector<Expect>& nested_expect() {
    static const std::vector<Expect> e = {
        {"state_dict.w", DType::F32, {2, 3}, {3, 1}, 0, 41, "0"},
        {"state_dict.b", DType::BF16, {2}, {1}, 0, 42, "1"},
        {"ema.w", DType::F16, {3, 2}, {2, 1}, 0, 43, "2"},
        {"param", DType::F32, {3}, {1}, 0, 44, "3"},
        {"list.0", DType::I64, {2}, {1}, 0, 45, "4"},
        {"list.1", DType::U8, {5}, {1}, 0, 46, "5"},
    };
    return e;
}

// Checks metadata and every element (walking the logical index, reading storage index
// offset + sum(idx * stride) from the formula) of the tensors against `expect`.
void check_tensors(const PthFile& f, const std::vector<Expect>& expect) {
    ASSERT_EQ(f.tensors().size(), expect.size());
    for (size_t n = 0; n < expect.size(); ++n) {
        const Expect& x = expect[n];
        const PthTensor& t = f.tensors()[n];
        SCOPED_TRACE(x.name);
        EXPECT_EQ(t.name, x.name);
        EXPECT_EQ(&f.at(x.name), &t);
        EXPECT_EQ(t.dtype, x.dtype);
        EXPECT_EQ(t.shape, x.shape);
        EXPECT_EQ(t.strides, x.strides);
        EXPECT_EQ(t.storage_offset, x.offset);
        EXPECT_EQ(t.storage_key, x.key);
        const std::vector<uint8_t> got = t.to_contiguous();
        const size_t es = dtype_size(x.dtype);
        uint64_t numel = 1;
        for (int64_t s : x.shape) numel *= s;
        ASSERT_EQ(got.size(), numel * es);
        EXPECT_EQ(t.nbytes(), numel * es);
        std::vector<int64_t> idx(x.shape.size(), 0);
        for (uint64_t e = 0; e < numel; ++e) {
            int64_t si = static_cast<int64_t>(x.offset);
            for (size_t d = 0; d < idx.size(); ++d) si += idx[d] * x.strides[d];
            const auto want = element(x.dtype, x.seed, si);
            ASSERT_EQ(0, std::memcmp(got.data() + e * es, want.data(), es)) << "element " << e;
            for (size_t d = idx.size(); d-- > 0;) {
                if (++idx[d] < x.shape[d]) break;
                idx[d] = 0;
            }
        }
    }
}

// --- well-formed checkpoints ------------------------------------------------------------------

TEST(Pth, StateDictValuesShapesAndDtypes) {
    PthFile f(fixture("state_dict.pth").string());
    EXPECT_EQ(f.prefix(), "state_dict");
    check_tensors(f, state_dict_expect());

    // Contiguous tensors are zero-copy views; the three "shared" views use one storage.
    const PthTensor& w = f.at("conv.weight");
    EXPECT_TRUE(w.is_contiguous());
    EXPECT_EQ(w.contiguous_bytes(f.label()).data(), w.data());
    EXPECT_EQ(w.numel(), 324u);
    EXPECT_EQ(f.at("shared.a").storage.data(), f.at("shared.t").storage.data());
    EXPECT_EQ(f.at("shared.b").data(), f.at("shared.a").data() + 6 * 4);
    EXPECT_EQ(f.at("shared.a").storage.size(), 16u * 4);
    EXPECT_EQ(f.at("scale").numel(), 1u);
    EXPECT_EQ(f.at("empty").numel(), 0u);
    EXPECT_TRUE(f.at("norm.gamma").is_contiguous());  // size-1 dims ignore their strides

    // The transposed view needs a gather; the zero-copy accessor refuses it by name.
    const PthTensor& tr = f.at("shared.t");
    EXPECT_FALSE(tr.is_contiguous());
    const std::string msg = error_of([&] { tr.contiguous_bytes(f.label()); });
    EXPECT_NE(msg.find("state_dict.pth: tensor 'shared.t' is not contiguous"), std::string::npos)
        << msg;

    EXPECT_EQ(f.find("_metadata"), nullptr);
    EXPECT_EQ(f.find("nope"), nullptr);
    EXPECT_NE(error_of([&] { f.at("nope"); }).find("state_dict.pth: no tensor 'nope'"),
              std::string::npos);
    EXPECT_TRUE(f.verify_crc());
}

TEST(Pth, StorageDataIs64ByteAlignedLikeTorch) {
    const auto bytes = load("state_dict.pth");
    PthFile f("mem", bytes);
    for (const PthTensor& t : f.tensors())
        EXPECT_EQ((t.storage.data() - bytes.data()) % 64, 0) << t.name;
}

TEST(Pth, Zip64ArchiveReadsTheSameTensors) {
    PthFile f(fixture("zip64.pth").string());
    EXPECT_EQ(f.prefix(), "archive");
    check_tensors(f, state_dict_expect());
}

TEST(Pth, NestedCheckpointUsesDottedNames) {
    PthFile f(fixture("nested.pth").string());
    check_tensors(f, nested_expect());
    const auto inner = f.under("state_dict");
    ASSERT_EQ(inner.size(), 2u);
    EXPECT_EQ(inner[0].name, "w");
    EXPECT_EQ(inner[1].name, "b");
    EXPECT_EQ(inner[0].data(), f.at("state_dict.w").data());
    EXPECT_TRUE(f.under("state").empty());  // whole components only
}

TEST(Pth, Protocol4PickleWithFramesAndMemoize) {
    PthFile f(fixture("proto4.pth").string());
    check_tensors(f, nested_expect());
}

TEST(Pth, PythonZipfileWithDeflatedPickleAndNoByteorder) {
    PthFile f(fixture("pyzip.pth").string());
    check_tensors(f, nested_expect());
    const auto bytes = load("pyzip.pth");
    ZipReader z("pyzip", bytes);
    ASSERT_NE(z.find("archive/data.pkl"), nullptr);
    EXPECT_EQ(z.find("archive/data.pkl")->method, 8);
    EXPECT_EQ(z.find("archive/byteorder"), nullptr);
    EXPECT_NE(error_of([&] { z.stored_data(*z.find("archive/data.pkl")); }).find("compressed"),
              std::string::npos);
}

TEST(Pth, CorruptStorageByteFailsCrcCheck) {
    auto bytes = load("state_dict.pth");
    PthFile good("mem", bytes);
    const size_t at = good.at("conv.bias").data() - bytes.data();
    bytes[at] ^= 1;
    PthFile bad("mem", bytes);
    EXPECT_FALSE(bad.verify_crc());
}

// --- hostile and broken files: one clear Error naming file and problem --------------------------

void expect_file_error(const std::string& name, const std::vector<std::string>& parts) {
    SCOPED_TRACE(name);
    const std::string path = fixture(name).string();
    const std::string msg = error_of([&] { PthFile f(path); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg << " lacks " << p;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
}

TEST(Pth, MaliciousAndBrokenFilesAreRefused) {
    expect_file_error(
        "evil_global.pth",
        {": data.pkl: refusing global os.system (only state-dict types are allowed)"});
    expect_file_error("bad_offset.pth",
                      {"entry 'archive/data/3'", "local header at offset 2147483392"});
    expect_file_error("data_outside.pth", {"entry 'archive/data/2'", "outside the archive data"});
    // 40 bytes declared where 10 are stored: the range ends inside the central directory.
    expect_file_error("into_cd.pth",
                      {"entry 'archive/.data/serialization_id'", "outside the archive data"});
    expect_file_error("overlap.pth", {"entry 'archive/data/2' overlaps entry 'archive/data/3'"});
    expect_file_error("name_mismatch.pth", {"entry 'archive/data/1'", "does not match"});
    expect_file_error("truncated.pth", {"no end-of-central-directory"});
    expect_file_error("big_endian.pth", {"big-endian"});
    expect_file_error("missing_storage.pth", {"storage '1'", "archive/data/1", "missing"});
    expect_file_error("short_storage.pth",
                      {"storage '0' holds 23 bytes", "6 F32 elements (24 bytes)"});
    expect_file_error("past_storage.pth",
                      {"data.pkl: tensor (offset 2) reaches past the end of storage '0'"});
    expect_file_error("legacy.pth", {"legacy (pre-1.6) torch format is not supported"});
}

TEST(Pth, NonCheckpointsAreRefused) {
    test::TempDir tmp;
    EXPECT_NE(error_of([&] { PthFile f((tmp / "absent.pth").string()); }).find("cannot open"),
              std::string::npos);
    test::write_file(tmp / "text.pth", "hello, this is not a checkpoint at all");
    EXPECT_NE(error_of([&] {
                  PthFile f((tmp / "text.pth").string());
              }).find("not a PyTorch zip checkpoint"),
              std::string::npos);
    test::write_file(tmp / "empty.pth", "");
    EXPECT_NE(error_of([&] { PthFile f((tmp / "empty.pth").string()); }).find("empty.pth: not a"),
              std::string::npos);
    // A zip that is only an EOCD (after a local-header signature so it passes the magic check).
    std::string z = "PK\x03\x04";
    z += std::string("PK\x05\x06", 4) + std::string(18, '\0');
    EXPECT_NE(error_of([&] { PthFile f("z", span_of(z)); }).find("no entries"), std::string::npos);
}

// --- ZipReader directly -----------------------------------------------------------------------

std::string le16s(uint16_t v) { return {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)}; }
std::string le32s(uint32_t v) { return le16s(v & 0xffff) + le16s(v >> 16); }

// An EOCD record with the given fields.
std::string eocd(uint16_t count, uint32_t cd_size, uint32_t cd_off,
                 const std::string& comment = "") {
    return "PK\x05\x06" + le16s(0) + le16s(0) + le16s(count) + le16s(count) + le32s(cd_size) +
           le32s(cd_off) + le16s(static_cast<uint16_t>(comment.size())) + comment;
}

TEST(ZipReader, StructuralErrorsNameTheArchive) {
    EXPECT_NE(error_of([] {
                  ZipReader z("a.zip", span_of(std::string(10, 'x')));
              }).find("a.zip: not a zip archive"),
              std::string::npos);
    // 65535 entries claimed in a 0-byte directory.
    const std::string absurd = eocd(0xfffe, 0, 0);
    EXPECT_NE(error_of([&] { ZipReader z("a.zip", span_of(absurd)); }).find("claims 65534 entries"),
              std::string::npos);
    const std::string outside = eocd(1, 46, 1000);
    EXPECT_NE(error_of([&] {
                  ZipReader z("a.zip", span_of(outside));
              }).find("central directory (offset 1000, 46 bytes) lies outside"),
              std::string::npos);
    const std::string saturated = eocd(0xffff, 0xffffffff, 0xffffffff);
    EXPECT_NE(error_of([&] { ZipReader z("a.zip", span_of(saturated)); }).find("ZIP64 locator"),
              std::string::npos);
    // An empty archive with a comment is fine.
    ZipReader empty("a.zip", span_of(eocd(0, 0, 0, "a comment")));
    EXPECT_TRUE(empty.entries().empty());
}

TEST(ZipReader, EntryCountMatchesAndLookupsWork) {
    const auto bytes = load("zip64.pth");
    ZipReader z("zip64", bytes);
    // data.pkl, byteorder, 14 storages, version, serialization_id
    EXPECT_EQ(z.entries().size(), 18u);
    const ZipEntry* e = z.find("archive/data/0");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->uncompressed_size, 324u * 4);
    EXPECT_EQ(e->data_offset % 64, 0u);
    EXPECT_TRUE(z.crc_matches(*e));
    const auto v = z.read(*z.find("archive/byteorder"));
    EXPECT_EQ(std::string(v.begin(), v.end()), "little");
    EXPECT_NE(error_of([&] { z.read(*e, 100); }).find("more than the limit of 100"),
              std::string::npos);
}

// --- the unpickler on hand-written pickles ------------------------------------------------------

std::string str_op(const std::string& s) {
    return "X" + le32s(static_cast<uint32_t>(s.size())) + s;
}
std::string global(const std::string& m, const std::string& n) { return "c" + m + "\n" + n + "\n"; }

std::string unpickle_error(const std::string& pkl, const UnpickleLimits& lim = {}) {
    return error_of([&] { unpickle_state_dict("f.pth: data.pkl", span_of(pkl), lim); });
}

TEST(Unpickle, RefusesEveryGlobalOutsideTheAllowList) {
    const std::vector<std::pair<std::string, std::string>> evil = {
        {"os", "system"},
        {"posix", "system"},
        {"builtins", "eval"},
        {"__builtin__", "getattr"},
        {"subprocess", "Popen"},
        {"torch", "load"},
        {"torch.nn.modules.conv", "Conv2d"},
        {"torch._utils", "_rebuild_qtensor"},
        {"collections", "defaultdict"},
        {"numpy.core.multiarray", "_reconstruct"},
    };
    for (const auto& [m, n] : evil) {
        const std::string msg = unpickle_error("\x80\x02" + global(m, n) + ")R.");
        EXPECT_EQ(msg, "f.pth: data.pkl: refusing global " + m + "." + n +
                           " (only state-dict types are allowed)");
    }
    // STACK_GLOBAL (protocol 4) takes the same check.
    const std::string sg =
        "\x80\x04\x8c\x08"
        "builtins"
        "\x8c\x04"
        "eval"
        "\x93"
        ")R.";
    EXPECT_NE(unpickle_error(sg).find("refusing global builtins.eval"), std::string::npos);
    // Control bytes in a hostile name do not reach the message.
    EXPECT_NE(unpickle_error("\x80\x02" + global("o\x1bs", "sy\x7fstem") + ".").find("o?s.sy?stem"),
              std::string::npos);
}

TEST(Unpickle, V3TensorOnUntypedStorageWithDtypeGlobal) {
    // {"w": _rebuild_tensor_v3(('storage', UntypedStorage, '0', 'cpu', 16), 1, (2,), (1,),
    //                          False, {}, torch.bfloat16)} with LONG1/BININT variants in it.
    const std::string pkl =
        "\x80\x02}" + str_op("w") + global("torch._utils", "_rebuild_tensor_v3") + "((" +
        str_op("storage") + global("torch", "UntypedStorage") + str_op("0") + str_op("cpu") +
        "\x8a\x01\x10" + "tQ" + "J\x01\x00\x00\x00"s + "K\x02\x85" + "M\x01\x00\x85"s + "\x89}" +
        global("torch", "bfloat16") + "tRs.";
    const auto r = unpickle_state_dict("f", span_of(pkl));
    ASSERT_EQ(r.storages.size(), 1u);
    EXPECT_EQ(r.storages[0].dtype, DType::U8);
    EXPECT_EQ(r.storages[0].numel, 16u);
    ASSERT_EQ(r.tensors.size(), 1u);
    EXPECT_EQ(r.tensors[0].name, "w");
    EXPECT_EQ(r.tensors[0].dtype, DType::BF16);
    EXPECT_EQ(r.tensors[0].storage_offset, 1u);
    EXPECT_EQ(r.tensors[0].shape, std::vector<int64_t>{2});
    // Offset 7 + 2 elements passes the 8 bf16 elements of 16 bytes.
    std::string past = pkl;
    past.replace(past.find("J\x01\x00\x00\x00"s), 5, "J\x07\x00\x00\x00"s);
    EXPECT_NE(unpickle_error(past).find("reaches past the end of storage '0' (8 elements)"),
              std::string::npos);
}

TEST(Unpickle, LongAndNegativeIntegers) {
    // A storage numel given by LONG1 (2^40) and a negative BININT offset, which is refused.
    const std::string pid = "((" + str_op("storage") + global("torch", "ByteStorage") +
                            str_op("0") + str_op("cpu") + "\x8a\x06\x00\x00\x00\x00\x00\x01"s +
                            "tQ";
    const std::string ok = "\x80\x02}" + str_op("w") +
                           global("torch._utils", "_rebuild_tensor_v2") + pid + "K\x00"s +
                           "K\x02\x85" + "K\x01\x85" + "\x89}tRs.";
    const auto r = unpickle_state_dict("f", span_of(ok));
    EXPECT_EQ(r.storages.at(0).numel, uint64_t{1} << 40);
    std::string neg = ok;
    neg.replace(neg.find("K\x00K\x02"s), 2, std::string("J\xfb\xff\xff\xff", 5));
    EXPECT_NE(unpickle_error(neg).find("negative storage offset -5"), std::string::npos);
    std::string huge = ok;
    huge.replace(huge.find("\x8a\x06"), 2, std::string("\x8a\x09", 2));
    EXPECT_NE(unpickle_error(huge).find("integer of 9 bytes is too large"), std::string::npos);
}

TEST(Unpickle, MalformedStreamsGiveClearErrors) {
    EXPECT_NE(unpickle_error("").find("pickle ends without STOP"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02}").find("pickle ends without STOP"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02].").find("top-level object is a list, not a dict"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02}}.").find("STOP with 2 values"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02.").find("STOP with 0 values"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02\x81").find("unsupported pickle opcode 0x81"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02i").find("unsupported pickle opcode 0x69"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x09}.").find("unsupported pickle protocol 9"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02h\x05").find("memo entry 5 is not defined"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02"
                             "a")
                  .find("stack underflow"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02(Na").find("stack underflow"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02(e").find("no container below the MARK"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02}(Nu").find("odd number"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02NNNs").find("SETITEM target is a None"), std::string::npos);
    EXPECT_NE(
        unpickle_error("\x80\x02" + global("torch", "FloatStorage") + ")R.").find("not callable"),
        std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02" + global("collections", "OrderedDict") + "N\x85R.")
                  .find("OrderedDict called with arguments"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02]Nb.").find("BUILD on a list"), std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02(X\x01\x00\x00\x00s\x85Q."s).find("persistent id is not"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02}(NNu.").find("dict key of type None"), std::string::npos);
    EXPECT_NE(
        unpickle_error("\x80\x02" + global("collections", "OrderedDict")).find("opcode at byte"),
        std::string::npos);
    // The same key with two dtypes.
    const auto pid = [](const std::string& type) {
        return "(" + str_op("storage") + global("torch", type) + str_op("0") + str_op("cpu") +
               "K\x04tQ";
    };
    EXPECT_NE(unpickle_error("\x80\x02]" + pid("FloatStorage") + "a" + pid("HalfStorage") + "a.")
                  .find("inconsistent dtype"),
              std::string::npos);
    // Duplicate names through a dotted key.
    const std::string t = global("torch._utils", "_rebuild_tensor_v2") + "(" + pid("FloatStorage") +
                          "K\x00K\x04\x85K\x01\x85\x89}tR"s;
    EXPECT_NE(unpickle_error("\x80\x02}" + str_op("a.b") + t + "s" + str_op("a") + "}" +
                             str_op("b") + t + "ss.")
                  .find("duplicate tensor name 'a.b'"),
              std::string::npos);
}

TEST(Unpickle, ResourceLimitsStopHostilePickles) {
    // A 4 GiB string length is refused before any allocation or read.
    EXPECT_NE(unpickle_error("\x80\x02X\xf0\xff\xff\xff").find("exceeds the limit"),
              std::string::npos);
    EXPECT_NE(unpickle_error("\x80\x02X\x10\x00\x00\x00"
                             "ab"s)
                  .find("truncated pickle"),
              std::string::npos);
    // Deep nesting through TUPLE1.
    std::string deep = "\x80\x02}" + str_op("k") + ")" + std::string(100, '\x85') + "s.";
    EXPECT_NE(unpickle_error(deep).find("nested deeper than 64"), std::string::npos);
    // A list appended to itself.
    std::string self_append = "\x80\x02}" + str_op("k") + "]q\x00"s;
    for (int i = 0; i < 80; ++i)
        self_append +=
            "h\x00"
            "a"s;
    EXPECT_NE(unpickle_error(self_append + "s.").find("nested deeper"), std::string::npos);

    UnpickleLimits lim;
    lim.max_stack = 100;
    EXPECT_NE(unpickle_error("\x80\x02" + std::string(200, 'N'), lim).find("stack exceeds 100"),
              std::string::npos);
    lim = {};
    lim.max_memo = 50;
    std::string memo = "\x80\x02N";
    for (uint32_t i = 0; i < 60; ++i) memo += "r" + le32s(i * 1000003u);
    EXPECT_NE(unpickle_error(memo, lim).find("memo exceeds 50"), std::string::npos);

    lim = {};
    lim.max_objects = 10;
    EXPECT_NE(unpickle_error("\x80\x02" + std::string(20, ')'), lim).find("more than 10 objects"),
              std::string::npos);
    lim = {};
    lim.max_items = 10;
    EXPECT_NE(unpickle_error("\x80\x02](" + std::string(20, 'N') + "e", lim)
                  .find("more than 10 values in containers"),
              std::string::npos);
    // A tensor referenced under a long name and many times over.
    const std::string t = global("torch._utils", "_rebuild_tensor_v2") + "((" + str_op("storage") +
                          global("torch", "FloatStorage") + str_op("0") + str_op("cpu") +
                          "K\x04tQK\x00K\x04\x85K\x01\x85\x89}tR"s;
    lim = {};
    lim.max_name = 8;
    EXPECT_NE(unpickle_error("\x80\x02}" + str_op("abcdefghij") + t + "s.", lim)
                  .find("tensor name 'abcdefghij' is longer than 8 bytes"),
              std::string::npos);
    lim = {};
    lim.max_tensors = 3;
    const std::string four = "\x80\x02}" + str_op("k") + "]" + t + "q\x00"s + "a(" + "h\x00"s +
                             "h\x00"s + "h\x00"s + "es.";
    EXPECT_NE(unpickle_error(four, lim).find("more than 3 tensors"), std::string::npos)
        << unpickle_error(four, lim);

    // Shared sub-lists: 30 levels of [L, L] name 2^30 paths; the walk budget stops it.
    std::string dag = "\x80\x02}" + str_op("k") + "]q\x00"s + "0";
    for (int i = 1; i <= 30; ++i)
        dag += "]q" + std::string(1, static_cast<char>(i)) + "(h" +
               std::string(1, static_cast<char>(i - 1)) + "h" +
               std::string(1, static_cast<char>(i - 1)) + "e0";
    dag += "h\x1es.";
    lim = {};
    lim.max_walk = 100000;
    EXPECT_NE(unpickle_error(dag, lim).find("object graph too large"), std::string::npos);
}

// --- corruption sweeps: every variant parses or throws lancet::Error ----------------------------

// Parses `bytes` and touches every tensor; returns whether it parsed.
bool parse_and_touch(const std::vector<uint8_t>& bytes) {
    try {
        PthFile f("fuzz", bytes);
        for (const PthTensor& t : f.tensors()) {
            EXPECT_LE(t.data() + (t.is_contiguous() ? t.nbytes() : 0),
                      t.storage.data() + t.storage.size());
            if (t.nbytes() <= (1u << 20)) t.to_contiguous();
        }
        return true;
    } catch (const Error&) {
        return false;
    }
}

TEST(PthCorruption, TruncationsAndByteFlipsNeverCrash) {
    for (const char* name : {"state_dict.pth", "zip64.pth", "pyzip.pth"}) {
        SCOPED_TRACE(name);
        const auto good = load(name);
        ASSERT_TRUE(parse_and_touch(good));
        size_t parsed = 0;
        for (size_t n = 0; n < good.size(); ++n)
            parsed += parse_and_touch(std::vector<uint8_t>(good.begin(), good.begin() + n));
        EXPECT_EQ(parsed, 0u);  // the EOCD is at the very end, so every prefix is refused
        // Flips inside tensor payloads only change values; sweep the structure around them.
        ZipReader z(name, good);
        std::vector<bool> payload(good.size(), false);
        for (const ZipEntry& e : z.entries())
            if (e.name.find("/data/") != std::string::npos)
                for (uint64_t b = 1; b < e.compressed_size; ++b) payload[e.data_offset + b] = true;
        for (size_t i = 0; i < good.size(); ++i) {
            if (payload[i]) continue;
            for (uint8_t mask : {0x01, 0x80, 0xff}) {
                auto bad = good;
                bad[i] ^= mask;
                parse_and_touch(bad);
            }
        }
    }
}

TEST(PthCorruption, PickleMutationsNeverCrash) {
    for (const char* name : {"state_dict.pth", "proto4.pth"}) {
        SCOPED_TRACE(name);
        const auto bytes = load(name);
        ZipReader z(name, bytes);
        const ZipEntry* e = nullptr;
        for (const auto& x : z.entries())
            if (x.name.ends_with("/data.pkl")) e = &x;
        ASSERT_NE(e, nullptr);
        const std::vector<uint8_t> pkl = z.read(*e);
        auto run = [](std::span<const uint8_t> p) {
            try {
                unpickle_state_dict("fuzz", p);
                return true;
            } catch (const Error&) {
                return false;
            }
        };
        ASSERT_TRUE(run(pkl));
        for (size_t n = 0; n < pkl.size(); ++n) EXPECT_FALSE(run({pkl.data(), n})) << n;
        size_t parsed = 0;
        for (size_t i = 0; i < pkl.size(); ++i) {
            for (uint8_t mask : {0x01, 0x02, 0x10, 0x80, 0xff}) {
                auto bad = pkl;
                bad[i] ^= mask;
                parsed += run(bad);
            }
        }
        EXPECT_GT(parsed, 0u);  // flips inside names and values still parse
    }
}

}  // namespace
}  // namespace lancet

namespace lancet {
namespace {

// `lancet inspect` reads .pth files with the same reader: a summary, or one line and exit 1.
TEST(PthCli, InspectSummarisesAndRefusesHostileFiles) {
    const auto good = test::run_lancet("inspect " + fixture("state_dict.pth").string());
    EXPECT_EQ(good.exit_code, 0) << good.err;
    EXPECT_NE(good.out.find("tensors: 16"), std::string::npos) << good.out;
    for (const char* bad : {"evil_global.pth", "truncated.pth", "data_outside.pth", "legacy.pth"}) {
        const auto r = test::run_lancet("inspect " + fixture(bad).string());
        EXPECT_EQ(r.exit_code, 1) << bad;
        EXPECT_EQ(r.signal, 0) << bad;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << bad << ": " << r.err;
    }
}

}  // namespace
}  // namespace lancet
