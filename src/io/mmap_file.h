// MappedFile: a read-only memory mapping of a whole file, the only way checkpoints are read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lancet {

class MappedFile {
  public:
    // Maps `path` read-only. Throws Error naming the path if it cannot be opened or mapped.
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

    // Asks the kernel to back [offset, offset+len) with transparent huge pages and read it ahead;
    // a hint only, so failures are ignored.
    void advise_hot(size_t offset, size_t len) const;
    // Drops this process's pages of [offset, offset+len) (they stay in the page cache and are
    // re-read on the next touch), so streaming through a file larger than RAM keeps RSS flat.
    void release(size_t offset, size_t len) const;
    // Asks the kernel to read [offset, offset+len) into the page cache now (a hint; it does not
    // map the pages, so RSS is unchanged), so a later pass over it does not wait for the disk.
    void prefetch(size_t offset, size_t len) const;

  private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace lancet
