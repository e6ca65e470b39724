// AlignedBuffer::grow, the scratch buffers' one way to grow: never shrinks, keeps its block (and
// contents) while big enough, a new zero-filled block when not; heap blocks 64-byte and mmap'ed
// ones 2 MiB aligned.
#include "core/aligned_buffer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

namespace lancet {
namespace {

bool all_zero(const uint8_t* p, size_t n) {
    return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

TEST(AlignedBuffer, GrowKeepsABigEnoughBlockAndReplacesASmallOne) {
    AlignedBuffer buf;
    EXPECT_EQ(buf.size(), 0u);
    uint8_t* small = buf.grow(100);
    ASSERT_NE(small, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(small) % 64, 0u);
    EXPECT_EQ(buf.size(), 100u);
    EXPECT_TRUE(all_zero(small, 100));
    small[7] = 42;
    EXPECT_EQ(buf.grow(50), small);  // big enough: the same block, contents kept, no shrink
    EXPECT_EQ(buf.size(), 100u);
    EXPECT_EQ(small[7], 42);

    const size_t big = AlignedBuffer::kHugeThreshold * 3 + 5;  // the mmap'ed kind
    uint8_t* p = buf.grow(big);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(buf.size(), big);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % AlignedBuffer::kHugePage, 0u);
    EXPECT_TRUE(all_zero(p, big));
    p[big - 1] = 1;
    EXPECT_EQ(buf.grow(big - 1), p);
    EXPECT_EQ(p[big - 1], 1);
}

}  // namespace
}  // namespace lancet
