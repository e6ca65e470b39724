// Tests TensorSource: a .pth state dict and a safetensors file read through the one interface.
#include "io/tensor_source.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/pth.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

std::string pth_fixture(const std::string& name) {
    return (fs::path(LANCET_TEST_DATA_DIR) / "pth" / name).string();
}

std::vector<uint8_t> bytes_of(const TensorView& v) { return {v.data, v.data + v.nbytes}; }

TEST(TensorSource, PthYieldsRowMajorViewsOfEveryTensor) {
    const std::string path = pth_fixture("state_dict.pth");
    const std::unique_ptr<TensorSource> src = open_tensor_source(path);
    EXPECT_EQ(src->format(), "PyTorch zip state dict");
    EXPECT_EQ(src->source(), path);
    const PthFile f(path);
    ASSERT_EQ(src->names().size(), f.tensors().size());
    for (size_t i = 0; i < f.tensors().size(); ++i) {
        const PthTensor& t = f.tensors()[i];
        ASSERT_EQ(src->names()[i], t.name);  // file order
        ASSERT_TRUE(src->has(t.name));
        const TensorInfo info = src->info(t.name);
        EXPECT_EQ(info.dtype, t.dtype) << t.name;
        EXPECT_EQ(info.shape, Shape(t.shape.begin(), t.shape.end())) << t.name;
        EXPECT_EQ(info.nbytes, t.nbytes()) << t.name;
        const TensorView v = src->get(t.name);
        EXPECT_EQ(v.dtype, t.dtype);
        EXPECT_EQ(v.shape, info.shape);
        // The same bytes as the strided gather, whether zero-copy or gathered.
        EXPECT_EQ(bytes_of(v), t.to_contiguous()) << t.name;
        EXPECT_EQ(src->file_of(t.name), path);
    }
    // A strided tensor is gathered once and stays put; a contiguous one is the mapping itself.
    const TensorView t1 = src->get("shared.t"), t2 = src->get("shared.t");
    EXPECT_EQ(t1.data, t2.data);
    EXPECT_FALSE(src->has("nope"));
    EXPECT_THROW(src->get("nope"), Error);
    EXPECT_THROW(src->info("nope"), Error);
    EXPECT_TRUE(src->metadata().empty());
}

TEST(TensorSource, SafetensorsAndPthServeTheSameTensors) {
    // Copy the state dict into a safetensors file through the interface, then read both back
    // through it: every name, dtype, shape and byte agrees.
    test::TempDir dir;
    const std::unique_ptr<TensorSource> pth = open_tensor_source(pth_fixture("state_dict.pth"));
    const std::string out = (dir / "copy.safetensors").string();
    {
        SafetensorsWriter w(out);
        for (const std::string& n : pth->names()) {
            const TensorInfo i = pth->info(n);
            w.add(n, i.dtype, i.shape);
        }
        w.set_metadata("format", "pt");
        w.begin();
        for (const std::string& n : pth->names()) {
            const TensorView v = pth->get(n);
            w.write(n, v.data, v.nbytes);
        }
        w.finish();
    }
    const std::unique_ptr<TensorSource> st = open_tensor_source(out);
    EXPECT_EQ(st->format(), "safetensors");
    EXPECT_EQ(st->metadata().at("format"), "pt");
    EXPECT_EQ(st->names().size(), pth->names().size());
    for (const std::string& n : pth->names()) {
        ASSERT_TRUE(st->has(n)) << n;
        const TensorInfo a = pth->info(n), b = st->info(n);
        EXPECT_EQ(a.dtype, b.dtype) << n;
        EXPECT_EQ(a.shape, b.shape) << n;
        EXPECT_EQ(a.nbytes, b.nbytes) << n;
        EXPECT_EQ(bytes_of(pth->get(n)), bytes_of(st->get(n))) << n;
        EXPECT_EQ(st->file_of(n), out);
    }
    EXPECT_THROW(st->get("nope"), Error);
}

}  // namespace
}  // namespace lancet
