// PthWriter: the zip container and the protocol-2 state-dict pickle torch.save writes.
#include "io/pth_writer.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "io/output_dir.h"

namespace lancet {
namespace {

const char* storage_class(DType t) {
    switch (t) {
        case DType::F64:
            return "DoubleStorage";
        case DType::F32:
            return "FloatStorage";
        case DType::F16:
            return "HalfStorage";
        case DType::BF16:
            return "BFloat16Storage";
        case DType::I64:
            return "LongStorage";
        case DType::I32:
            return "IntStorage";
        case DType::I16:
            return "ShortStorage";
        case DType::I8:
            return "CharStorage";
        case DType::U8:
            return "ByteStorage";
        case DType::BOOL:
            return "BoolStorage";
        default:
            return nullptr;
    }
}

// The pickle opcodes used (protocol 2).
constexpr char kProto = '\x80', kGlobal = 'c', kBinPut = 'q', kLongBinPut = 'r', kBinGet = 'h',
               kLongBinGet = 'j', kEmptyTuple = ')', kReduce = 'R', kMark = '(', kBinUnicode = 'X',
               kTuple = 't', kTuple1 = '\x85', kTuple2 = '\x86', kTuple3 = '\x87', kBinPersId = 'Q',
               kNewFalse = '\x89', kSetItems = 'u', kStop = '.', kBinInt1 = 'K', kBinInt2 = 'M',
               kBinInt = 'J', kLong1 = '\x8a';

class Pickler {
  public:
    std::string out;

    void op(char c) { out.push_back(c); }
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
    // Python's choice of integer opcode for a non-negative int.
    void integer(uint64_t v) {
        if (v <= 0xff) {
            op(kBinInt1);
            out.push_back(static_cast<char>(v));
        } else if (v <= 0xffff) {
            op(kBinInt2);
            out.push_back(static_cast<char>(v & 0xff));
            out.push_back(static_cast<char>(v >> 8));
        } else if (v <= 0x7fffffff) {
            op(kBinInt);
            u32(static_cast<uint32_t>(v));
        } else {
            // LONG1: little-endian two's complement, with a zero byte if the top bit is set.
            std::string b;
            for (uint64_t x = v; x; x >>= 8) b.push_back(static_cast<char>(x & 0xff));
            if (static_cast<unsigned char>(b.back()) & 0x80) b.push_back('\0');
            op(kLong1);
            out.push_back(static_cast<char>(b.size()));
            out += b;
        }
    }
    void string(const std::string& s) {
        op(kBinUnicode);
        u32(static_cast<uint32_t>(s.size()));
        out += s;
    }
    // A GLOBAL, memoized on first use and fetched from the memo afterwards.
    void global(const std::string& module, const std::string& name) {
        const std::string key = module + "\n" + name + "\n";
        for (size_t i = 0; i < memo_.size(); ++i)
            if (memo_[i] == key) return get(static_cast<uint32_t>(i));
        op(kGlobal);
        out += key;
        put(static_cast<uint32_t>(memo_.size()));
        memo_.push_back(key);
    }
    void tuple_of(const Shape& v) {
        if (v.empty()) return op(kEmptyTuple);
        if (v.size() > 3) op(kMark);
        for (int64_t x : v) integer(static_cast<uint64_t>(x));
        op(v.size() == 1 ? kTuple1 : v.size() == 2 ? kTuple2 : v.size() == 3 ? kTuple3 : kTuple);
    }

  private:
    void put(uint32_t i) {
        if (i < 256) {
            op(kBinPut);
            out.push_back(static_cast<char>(i));
        } else {
            op(kLongBinPut);
            u32(i);
        }
    }
    void get(uint32_t i) {
        if (i < 256) {
            op(kBinGet);
            out.push_back(static_cast<char>(i));
        } else {
            op(kLongBinGet);
            u32(i);
        }
    }
    std::vector<std::string> memo_;
};

void put16(std::string& s, uint16_t v) {
    s.push_back(static_cast<char>(v & 0xff));
    s.push_back(static_cast<char>(v >> 8));
}
void put32(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put64(std::string& s, uint64_t v) {
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

constexpr uint32_t kSat32 = 0xffffffffu;
constexpr uint16_t kDosDate = 0x21;  // 1980-01-01, as torch's writer stores
constexpr char kPrefix[] = "archive/";

}  // namespace

std::string state_dict_pickle(const std::vector<PthTensorDecl>& tensors) {
    Pickler p;
    p.op(kProto);
    p.out.push_back('\x02');
    p.global("collections", "OrderedDict");
    p.op(kEmptyTuple);
    p.op(kReduce);
    // SETITEMS in batches of 1000, as Python's pickler does.
    for (size_t b = 0; b < tensors.size(); b += 1000) {
        p.op(kMark);
        for (size_t i = b; i < std::min(tensors.size(), b + 1000); ++i) {
            const PthTensorDecl& t = tensors[i];
            p.string(t.name);
            p.global("torch._utils", "_rebuild_tensor_v2");
            p.op(kMark);
            // the storage, as a persistent id
            p.op(kMark);
            p.string("storage");
            p.global("torch", storage_class(t.dtype));
            p.string(std::to_string(i));
            p.string("cpu");
            p.integer(static_cast<uint64_t>(shape_numel(t.shape)));
            p.op(kTuple);
            p.op(kBinPersId);
            p.integer(0);  // storage offset
            p.tuple_of(t.shape);
            Shape stride(t.shape.size());
            int64_t acc = 1;
            for (size_t d = t.shape.size(); d-- > 0;) {
                stride[d] = acc;
                acc *= t.shape[d];
            }
            p.tuple_of(stride);
            p.op(kNewFalse);                         // requires_grad
            p.global("collections", "OrderedDict");  // backward hooks
            p.op(kEmptyTuple);
            p.op(kReduce);
            p.op(kTuple);
            p.op(kReduce);
        }
        p.op(kSetItems);
    }
    p.op(kStop);
    return p.out;
}

PthWriter::PthWriter(std::string path, bool force_zip64)
    : path_(std::move(path)), force_zip64_(force_zip64) {
    check_not_source(path_);
}

PthWriter::~PthWriter() = default;

void PthWriter::add(const std::string& name, DType dtype, const Shape& shape) {
    if (begun_) fail(path_, ": tensor \"", name, "\" added after the header was written");
    if (!storage_class(dtype))
        fail(path_, ": tensor \"", name, "\": dtype ", dtype_name(dtype), " has no torch storage");
    for (int64_t d : shape)
        if (d < 0) fail(path_, ": tensor \"", name, "\": negative dimension");
    if (!names_.insert(name).second) fail(path_, ": tensor \"", name, "\" added twice");
    tensors_.push_back({name, dtype, shape});
    data_bytes_ += static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
}

void PthWriter::write_raw(const void* data, size_t n) {
    file_->write_all(data, n);
    pos_ += n;
}

// A local header (CRC 0 for now: close_entry() writes the real one in place) whose extra field
// pads the data start to 64 bytes.
void PthWriter::open_entry(const std::string& name, uint64_t size) {
    Entry e;
    e.name = kPrefix + name;
    e.size = size;
    e.local_offset = pos_;
    const bool z64 = size >= kSat32 || force_zip64_;
    std::string extra;
    if (z64) {
        put16(extra, 1);
        put16(extra, 16);
        put64(extra, size);
        put64(extra, size);
    }
    const uint64_t before = pos_ + 30 + e.name.size() + extra.size() + 4;
    const uint16_t pad = static_cast<uint16_t>((64 - before % 64) % 64);
    put16(extra, 0x4246);  // "FB"
    put16(extra, pad);
    extra.append(pad, 'Z');
    std::string h;
    put32(h, 0x04034b50);
    put16(h, z64 ? 45 : 20);
    put16(h, 0);  // flags
    put16(h, 0);  // stored
    put16(h, 0);  // time
    put16(h, kDosDate);
    put32(h, 0);  // crc, patched
    put32(h, z64 ? kSat32 : static_cast<uint32_t>(size));
    put32(h, z64 ? kSat32 : static_cast<uint32_t>(size));
    put16(h, static_cast<uint16_t>(e.name.size()));
    put16(h, static_cast<uint16_t>(extra.size()));
    h += e.name;
    h += extra;
    write_raw(h.data(), h.size());
    entries_.push_back(std::move(e));
    cur_crc_ = static_cast<uint32_t>(::crc32(0L, Z_NULL, 0));
}

void PthWriter::close_entry() {
    Entry& e = entries_.back();
    e.crc = cur_crc_;
    uint8_t b[4];
    for (int i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>((e.crc >> (8 * i)) & 0xff);
    file_->pwrite_all(b, 4, e.local_offset + 14);
}

void PthWriter::write_entry(const std::string& name, const std::string& bytes) {
    open_entry(name, bytes.size());
    cur_crc_ = static_cast<uint32_t>(
        ::crc32(cur_crc_, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
    write_raw(bytes.data(), bytes.size());
    close_entry();
}

void PthWriter::begin() {
    if (begun_) return;
    file_ = std::make_unique<TempFile>(path_);
    begun_ = true;
    write_entry("data.pkl", state_dict_pickle(tensors_));
    write_entry("byteorder", "little");
    cur_ = 0;
    cur_done_ = 0;
    if (!tensors_.empty())
        open_entry("data/0", static_cast<uint64_t>(shape_numel(tensors_[0].shape)) *
                                 dtype_size(tensors_[0].dtype));
    // Empty tensors are complete as soon as they are opened.
    while (cur_ < tensors_.size() && entries_.back().size == 0) {
        close_entry();
        if (++cur_ < tensors_.size())
            open_entry("data/" + std::to_string(cur_),
                       static_cast<uint64_t>(shape_numel(tensors_[cur_].shape)) *
                           dtype_size(tensors_[cur_].dtype));
    }
}

void PthWriter::append(const void* data, size_t nbytes) {
    if (!begun_) fail(path_, ": append() before begin()");
    const auto* p = static_cast<const uint8_t*>(data);
    while (nbytes > 0) {
        if (cur_ >= tensors_.size()) fail(path_, ": more bytes appended than the tensors hold");
        const uint64_t need = entries_.back().size - cur_done_;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(need, nbytes));
        cur_crc_ = static_cast<uint32_t>(::crc32_z(cur_crc_, p, take));
        write_raw(p, take);
        p += take;
        nbytes -= take;
        cur_done_ += take;
        while (cur_ < tensors_.size() && cur_done_ == entries_.back().size) {
            close_entry();
            cur_done_ = 0;
            if (++cur_ < tensors_.size())
                open_entry("data/" + std::to_string(cur_),
                           static_cast<uint64_t>(shape_numel(tensors_[cur_].shape)) *
                               dtype_size(tensors_[cur_].dtype));
        }
    }
}

void PthWriter::finish() {
    if (!begun_) begin();
    if (cur_ < tensors_.size())
        fail(path_, ": tensor \"", tensors_[cur_].name, "\" was not completely written");
    write_entry("version", "3\n");

    const uint64_t cd_offset = pos_;
    std::string cd;
    for (const Entry& e : entries_) {
        const bool big_size = e.size >= kSat32 || force_zip64_,
                   big_off = e.local_offset >= kSat32 || force_zip64_;
        std::string extra;
        if (big_size || big_off) {
            put16(extra, 1);
            put16(extra, static_cast<uint16_t>(8 * (2 * big_size + big_off)));
            if (big_size) put64(extra, e.size), put64(extra, e.size);
            if (big_off) put64(extra, e.local_offset);
        }
        put32(cd, 0x02014b50);
        put16(cd, 0x031e);  // made by: unix, 3.0
        put16(cd, big_size || big_off ? 45 : 20);
        put16(cd, 0);
        put16(cd, 0);
        put16(cd, 0);
        put16(cd, kDosDate);
        put32(cd, e.crc);
        put32(cd, big_size ? kSat32 : static_cast<uint32_t>(e.size));
        put32(cd, big_size ? kSat32 : static_cast<uint32_t>(e.size));
        put16(cd, static_cast<uint16_t>(e.name.size()));
        put16(cd, static_cast<uint16_t>(extra.size()));
        put16(cd, 0);  // comment
        put16(cd, 0);  // disk
        put16(cd, 0);  // internal attributes
        put32(cd, 0);  // external attributes
        put32(cd, big_off ? kSat32 : static_cast<uint32_t>(e.local_offset));
        cd += e.name;
        cd += extra;
    }
    const uint64_t n = entries_.size(), cd_size = cd.size();
    const bool z64 = n >= 0xffff || cd_offset >= kSat32 || cd_size >= kSat32 || force_zip64_;
    if (z64) {
        const uint64_t rec = cd_offset + cd_size;
        put32(cd, 0x06064b50);
        put64(cd, 44);
        put16(cd, 0x031e);
        put16(cd, 45);
        put32(cd, 0);
        put32(cd, 0);
        put64(cd, n);
        put64(cd, n);
        put64(cd, cd_size);
        put64(cd, cd_offset);
        put32(cd, 0x07064b50);
        put32(cd, 0);
        put64(cd, rec);
        put32(cd, 1);
    }
    put32(cd, 0x06054b50);
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, z64 ? 0xffff : static_cast<uint16_t>(n));
    put16(cd, z64 ? 0xffff : static_cast<uint16_t>(n));
    put32(cd, z64 ? kSat32 : static_cast<uint32_t>(cd_size));
    put32(cd, z64 ? kSat32 : static_cast<uint32_t>(cd_offset));
    put16(cd, 0);
    write_raw(cd.data(), cd.size());

    file_->commit();
    finished_ = true;
}

}  // namespace lancet
