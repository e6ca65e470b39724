// AlignedBuffer implementation: over-map by one huge page, trim to a 2 MiB boundary, madvise.
#include "core/aligned_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace lancet {

AlignedBuffer::AlignedBuffer(size_t bytes) : size_(bytes) {
    if (bytes == 0) return;
    if (bytes < kHugeThreshold) {
        const size_t rounded = (bytes + 63) & ~size_t{63};
        data_ = static_cast<uint8_t*>(std::aligned_alloc(64, rounded));
        if (!data_) throw std::bad_alloc();
        std::memset(data_, 0, rounded);
        return;
    }
    const size_t len = (bytes + kHugePage - 1) & ~(kHugePage - 1);
    void* p =
        mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t base = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = (base + kHugePage - 1) & ~(kHugePage - 1);
    // Give back the unaligned head and the unused tail so only [aligned, aligned+len) stays mapped.
    if (aligned > base) munmap(p, aligned - base);
    const size_t tail = (base + len + kHugePage) - (aligned + len);
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + len), tail);
    data_ = reinterpret_cast<uint8_t*>(aligned);
    mapped_ = len;
    // Best effort: without THP the buffer still works on 4 KiB pages.
    madvise(data_, len, MADV_HUGEPAGE);
}

AlignedBuffer::~AlignedBuffer() { release(); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      mapped_(std::exchange(o.mapped_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
        release();
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
        mapped_ = std::exchange(o.mapped_, 0);
    }
    return *this;
}

void AlignedBuffer::release() {
    if (!data_) return;
    if (mapped_)
        munmap(data_, mapped_);
    else
        std::free(data_);
    data_ = nullptr;
    size_ = mapped_ = 0;
}

}  // namespace lancet
