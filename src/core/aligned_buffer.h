// AlignedBuffer: an owning, zero-filled byte buffer; big ones sit on 2 MiB pages (THP madvise).
#pragma once

#include <cstddef>
#include <cstdint>

namespace lancet {

// Buffers of kHugeThreshold bytes or more are mmap'ed, aligned to 2 MiB and marked
// MADV_HUGEPAGE: streaming reads on this class of machine run ~1.6x faster from 2 MiB pages than
// from 4 KiB pages (fewer TLB misses), and the kernels stream weights. Smaller ones are 64-byte
// aligned heap blocks. Throws std::bad_alloc when the memory is not there.
class AlignedBuffer {
  public:
    static constexpr size_t kHugePage = size_t{2} << 20;
    static constexpr size_t kHugeThreshold = size_t{1} << 20;

    AlignedBuffer() = default;
    explicit AlignedBuffer(size_t bytes);
    ~AlignedBuffer();
    AlignedBuffer(AlignedBuffer&& o) noexcept;
    AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;

    // Grows to at least `bytes` (a new zero-filled buffer; the old contents are dropped) and
    // returns data(): the scratch buffers kept between calls, no allocation once warm.
    uint8_t* grow(size_t bytes) {
        if (size_ < bytes) *this = AlignedBuffer(bytes);
        return data_;
    }
    uint8_t* data() { return data_; }
    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    template <typename T>
    T* as() {
        return reinterpret_cast<T*>(data_);
    }
    template <typename T>
    const T* as() const {
        return reinterpret_cast<const T*>(data_);
    }

  private:
    void release();
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
    size_t mapped_ = 0;  // bytes mmap'ed (0: heap block)
};

}  // namespace lancet
