// ZipReader: a strictly bounds-checked, read-only ZIP (and ZIP64) directory reader over bytes in
// memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lancet {

class MappedFile;

// One archive member, as the central directory describes it, with the data offset resolved
// through (and cross-checked against) its local header.
struct ZipEntry {
    std::string name;     // raw name bytes; never used as a path, so ".." is just a name
    uint16_t method = 0;  // 0 = stored, 8 = deflate
    uint16_t flags = 0;   // general purpose bit flags
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t uncompressed_size = 0;
    uint64_t local_header_offset = 0;
    uint64_t data_offset = 0;  // first byte of the (possibly compressed) data
};

// Parses the end-of-central-directory record (ZIP64 aware), the central directory and every
// local header at construction; any inconsistency throws lancet::Error naming the archive and,
// where there is one, the entry. Entries are never extracted to disk.
class ZipReader {
  public:
    // `label` names the bytes in error messages (usually the file path). The bytes must outlive
    // the reader: stored entries are returned as spans into them.
    ZipReader(std::string label, std::span<const uint8_t> bytes);
    explicit ZipReader(const MappedFile& file);

    const std::string& label() const { return label_; }
    const std::vector<ZipEntry>& entries() const { return entries_; }

    // The entry with exactly this name, or nullptr.
    const ZipEntry* find(std::string_view name) const;

    // Zero-copy view of a stored (method 0) entry; throws if the entry is compressed.
    std::span<const uint8_t> stored_data(const ZipEntry& e) const;

    // The entry's uncompressed bytes (stored: copied; deflate: inflated with zlib), CRC-checked.
    // Refuses entries whose declared size exceeds `max_size`, so a small archive cannot ask for
    // an enormous buffer.
    std::vector<uint8_t> read(const ZipEntry& e, uint64_t max_size = uint64_t{1} << 30) const;

    // Recomputes the CRC-32 of a stored entry and compares it with the directory's (this reads
    // every byte, so callers choose when to pay for it).
    bool crc_matches(const ZipEntry& e) const;

  private:
    void parse();
    void parse_local_header(ZipEntry& e, uint64_t cd_offset) const;

    std::string label_;
    std::span<const uint8_t> bytes_;
    std::vector<ZipEntry> entries_;
    std::unordered_map<std::string, size_t> by_name_;
};

}  // namespace lancet
