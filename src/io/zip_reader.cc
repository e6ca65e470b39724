// Implementation of ZipReader: EOCD search, ZIP64 records and extras, central directory, local
// headers.
#include "io/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "io/mmap_file.h"

namespace lancet {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr size_t kEocdSize = 22;
constexpr size_t kZip64LocatorSize = 20;
constexpr size_t kZip64EocdSize = 56;
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint32_t kSat32 = 0xffffffffu;
constexpr uint16_t kSat16 = 0xffffu;

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) {
    return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
           (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const uint8_t* p) {
    return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

// True when [off, off + len) lies inside [0, limit), without overflowing.
bool fits(uint64_t off, uint64_t len, uint64_t limit) { return off <= limit && len <= limit - off; }

uint32_t crc_of(const uint8_t* p, uint64_t n) {
    uLong crc = ::crc32(0L, Z_NULL, 0);
    while (n > 0) {
        const uInt chunk = static_cast<uInt>(std::min<uint64_t>(n, 1u << 30));
        crc = ::crc32(crc, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return static_cast<uint32_t>(crc);
}

}  // namespace

ZipReader::ZipReader(std::string label, std::span<const uint8_t> bytes)
    : label_(std::move(label)), bytes_(bytes) {
    parse();
}

ZipReader::ZipReader(const MappedFile& file)
    : ZipReader(file.path(), std::span<const uint8_t>(file.data(), file.size())) {}

void ZipReader::parse() {
    const uint8_t* d = bytes_.data();
    const uint64_t size = bytes_.size();
    if (size < kEocdSize) fail(label_, ": not a zip archive (", size, " bytes, too short)");

    // The EOCD is the last record; only its variable-length comment (at most 64 KiB) may follow,
    // so the backwards search is bounded.
    uint64_t eocd = std::numeric_limits<uint64_t>::max();
    const uint64_t lowest = size - kEocdSize > 0xffff ? size - kEocdSize - 0xffff : 0;
    for (uint64_t p = size - kEocdSize + 1; p-- > lowest;) {
        if (le32(d + p) == kEocdSig && p + kEocdSize + le16(d + p + 20) <= size) {
            eocd = p;
            break;
        }
    }
    if (eocd == std::numeric_limits<uint64_t>::max())
        fail(label_, ": not a zip archive (no end-of-central-directory record)");

    const uint16_t disk = le16(d + eocd + 4), cd_disk = le16(d + eocd + 6);
    uint64_t disk_entries = le16(d + eocd + 8), count = le16(d + eocd + 10);
    uint64_t cd_size = le32(d + eocd + 12), cd_offset = le32(d + eocd + 16);
    uint64_t cd_limit = eocd;  // the central directory must end before this

    const bool has_locator =
        eocd >= kZip64LocatorSize && le32(d + eocd - kZip64LocatorSize) == kZip64LocatorSig;
    if (has_locator) {
        const uint8_t* loc = d + eocd - kZip64LocatorSize;
        const uint64_t rec = le64(loc + 8);
        if (le32(loc + 4) != 0 || le32(loc + 16) > 1)
            fail(label_, ": multi-disk zip archives are not supported");
        if (!fits(rec, kZip64EocdSize, eocd - kZip64LocatorSize) || le32(d + rec) != kZip64EocdSig)
            fail(label_, ": ZIP64 end-of-central-directory record at offset ", rec,
                 " is missing or outside the archive");
        if (le32(d + rec + 16) != 0 || le32(d + rec + 20) != 0)
            fail(label_, ": multi-disk zip archives are not supported");
        disk_entries = le64(d + rec + 24);
        count = le64(d + rec + 32);
        cd_size = le64(d + rec + 40);
        cd_offset = le64(d + rec + 48);
        cd_limit = rec;
    } else {
        if (count == kSat16 || cd_size == kSat32 || cd_offset == kSat32)
            fail(label_, ": ZIP64 values are saturated but the ZIP64 locator is missing");
        if (disk != 0 || cd_disk != 0) fail(label_, ": multi-disk zip archives are not supported");
    }
    if (disk_entries != count) fail(label_, ": multi-disk zip archives are not supported");
    if (!fits(cd_offset, cd_size, cd_limit))
        fail(label_, ": central directory (offset ", cd_offset, ", ", cd_size,
             " bytes) lies outside the archive");
    if (count > cd_size / kCentralSize)
        fail(label_, ": central directory claims ", count, " entries but has room for at most ",
             cd_size / kCentralSize);

    const uint64_t cd_end = cd_offset + cd_size;
    entries_.reserve(count);
    uint64_t p = cd_offset;
    for (uint64_t i = 0; i < count; ++i) {
        if (!fits(p, kCentralSize, cd_end) || le32(d + p) != kCentralSig)
            fail(label_, ": central directory entry ", i, " at offset ", p, " is malformed");
        const uint8_t* h = d + p;
        ZipEntry e;
        e.flags = le16(h + 8);
        e.method = le16(h + 10);
        e.crc32 = le32(h + 16);
        e.compressed_size = le32(h + 20);
        e.uncompressed_size = le32(h + 24);
        const uint16_t name_len = le16(h + 28), extra_len = le16(h + 30),
                       comment_len = le16(h + 32);
        const uint16_t start_disk = le16(h + 34);
        e.local_header_offset = le32(h + 42);
        const uint64_t var_len = uint64_t{name_len} + extra_len + comment_len;
        if (!fits(p + kCentralSize, var_len, cd_end))
            fail(label_, ": central directory entry ", i, " runs past the directory end");
        e.name.assign(reinterpret_cast<const char*>(h + kCentralSize), name_len);

        // ZIP64 extended information: only the saturated fields are present, in this order.
        const bool need_u = e.uncompressed_size == kSat32, need_c = e.compressed_size == kSat32;
        const bool need_o = e.local_header_offset == kSat32, need_d = start_disk == kSat16;
        bool got_zip64 = false;
        const uint8_t* x = h + kCentralSize + name_len;
        for (uint64_t q = 0; q + 4 <= extra_len;) {
            const uint16_t id = le16(x + q), len = le16(x + q + 2);
            if (q + 4 + len > extra_len)
                fail(label_, ": entry '", e.name, "': extra field runs past its end");
            if (id == kZip64ExtraId && !got_zip64) {
                got_zip64 = true;
                const uint8_t* f = x + q + 4;
                const uint64_t want = 8u * (need_u + need_c + need_o) + 4u * need_d;
                if (len < want)
                    fail(label_, ": entry '", e.name, "': ZIP64 extra field is too short");
                if (need_u) e.uncompressed_size = le64(f), f += 8;
                if (need_c) e.compressed_size = le64(f), f += 8;
                if (need_o) e.local_header_offset = le64(f), f += 8;
                if (need_d && le32(f) != 0)
                    fail(label_, ": entry '", e.name, "': multi-disk archives are not supported");
            }
            q += 4 + len;
        }
        if ((need_u || need_c || need_o || need_d) && !got_zip64)
            fail(label_, ": entry '", e.name,
                 "': ZIP64 sizes are saturated but no ZIP64 extra field");
        if (!need_d && start_disk != 0)
            fail(label_, ": entry '", e.name, "': multi-disk archives are not supported");
        if (e.method == 0 && e.compressed_size != e.uncompressed_size)
            fail(label_, ": entry '", e.name, "': stored entry has compressed size ",
                 e.compressed_size, " but uncompressed size ", e.uncompressed_size);
        parse_local_header(e, cd_offset);
        if (!by_name_.emplace(e.name, entries_.size()).second)
            fail(label_, ": duplicate entry '", e.name, "'");
        entries_.push_back(std::move(e));
        p += kCentralSize + var_len;
    }

    // Members may not share bytes: overlapping entries are how zip bombs and parser confusion
    // attacks work, and no legitimate writer produces them.
    std::vector<const ZipEntry*> order;
    order.reserve(entries_.size());
    for (const auto& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const ZipEntry* a, const ZipEntry* b) {
        return a->local_header_offset < b->local_header_offset;
    });
    for (size_t i = 1; i < order.size(); ++i) {
        const ZipEntry& a = *order[i - 1];
        if (a.data_offset + a.compressed_size > order[i]->local_header_offset)
            fail(label_, ": entry '", a.name, "' overlaps entry '", order[i]->name, "'");
    }
}

void ZipReader::parse_local_header(ZipEntry& e, uint64_t cd_offset) const {
    const uint8_t* d = bytes_.data();
    const uint64_t lho = e.local_header_offset;
    if (!fits(lho, kLocalSize, cd_offset) || le32(d + lho) != kLocalSig)
        fail(label_, ": entry '", e.name, "': local header at offset ", lho,
             " is outside the archive data or malformed");
    const uint8_t* h = d + lho;
    const uint16_t name_len = le16(h + 26), extra_len = le16(h + 28);
    if (!fits(lho + kLocalSize, uint64_t{name_len} + extra_len, cd_offset))
        fail(label_, ": entry '", e.name, "': local header runs into the central directory");
    if (std::string_view(reinterpret_cast<const char*>(h + kLocalSize), name_len) != e.name)
        fail(label_, ": entry '", e.name, "': local header name '",
             std::string(reinterpret_cast<const char*>(h + kLocalSize), name_len),
             "' does not match the central directory");
    if (le16(h + 8) != e.method)
        fail(label_, ": entry '", e.name, "': local header compression method ", le16(h + 8),
             " differs from the central directory's ", e.method);
    // With a data descriptor (bit 3) the local sizes may be zero; otherwise they must agree,
    // unless saturated (then the local ZIP64 extra holds them and the central copy rules).
    const uint32_t local_csize = le32(h + 18);
    if (!(e.flags & 0x8) && local_csize != kSat32 &&
        local_csize != static_cast<uint32_t>(e.compressed_size))
        fail(label_, ": entry '", e.name, "': local header size ", local_csize,
             " differs from the central directory's ", e.compressed_size);
    e.data_offset = lho + kLocalSize + name_len + extra_len;
    if (!fits(e.data_offset, e.compressed_size, cd_offset))
        fail(label_, ": entry '", e.name, "': data (offset ", e.data_offset, ", ",
             e.compressed_size, " bytes) lies outside the archive data");
}

const ZipEntry* ZipReader::find(std::string_view name) const {
    auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::span<const uint8_t> ZipReader::stored_data(const ZipEntry& e) const {
    if (e.flags & 0x1) fail(label_, ": entry '", e.name, "' is encrypted");
    if (e.method != 0)
        fail(label_, ": entry '", e.name, "' is compressed (method ", e.method,
             "); only stored entries can be mapped");
    return bytes_.subspan(e.data_offset, e.compressed_size);
}

std::vector<uint8_t> ZipReader::read(const ZipEntry& e, uint64_t max_size) const {
    if (e.flags & 0x1) fail(label_, ": entry '", e.name, "' is encrypted");
    if (e.uncompressed_size > max_size)
        fail(label_, ": entry '", e.name, "' is ", e.uncompressed_size,
             " bytes uncompressed, more than the limit of ", max_size);
    std::vector<uint8_t> out;
    if (e.method == 0) {
        auto s = stored_data(e);
        out.assign(s.begin(), s.end());
    } else if (e.method == 8) {
        out.resize(e.uncompressed_size);
        z_stream zs{};
        if (inflateInit2(&zs, -MAX_WBITS) != Z_OK)
            fail(label_, ": entry '", e.name, "': cannot initialise zlib");
        const uint8_t* in = bytes_.data() + e.data_offset;
        uint64_t in_left = e.compressed_size, out_done = 0;
        int rc = Z_OK;
        while (rc == Z_OK) {
            const uInt in_chunk = static_cast<uInt>(std::min<uint64_t>(in_left, 1u << 30));
            const uInt out_chunk =
                static_cast<uInt>(std::min<uint64_t>(out.size() - out_done, 1u << 30));
            zs.next_in = const_cast<Bytef*>(in);
            zs.avail_in = in_chunk;
            zs.next_out = out.data() + out_done;
            zs.avail_out = out_chunk;
            rc = inflate(&zs, Z_NO_FLUSH);
            const uint64_t used = in_chunk - zs.avail_in, made = out_chunk - zs.avail_out;
            in += used;
            in_left -= used;
            out_done += made;
            if (rc == Z_OK && used == 0 && made == 0) rc = Z_BUF_ERROR;  // no progress possible
        }
        inflateEnd(&zs);
        if (rc != Z_STREAM_END || out_done != out.size())
            fail(label_, ": entry '", e.name, "': corrupt deflate data (inflated ", out_done,
                 " of ", out.size(), " declared bytes)");
    } else {
        fail(label_, ": entry '", e.name, "' uses unsupported compression method ", e.method);
    }
    if (crc_of(out.data(), out.size()) != e.crc32)
        fail(label_, ": entry '", e.name, "': CRC-32 mismatch (the archive is corrupt)");
    return out;
}

bool ZipReader::crc_matches(const ZipEntry& e) const {
    auto s = stored_data(e);
    return crc_of(s.data(), s.size()) == e.crc32;
}

}  // namespace lancet
