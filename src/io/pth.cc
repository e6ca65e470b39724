// Implementation of PthFile: torch zip layout, byte order, restricted unpickling, storage checks.
#include "io/pth.h"

#include <cstring>

#include "core/error.h"
#include "io/mmap_file.h"
#include "io/torch_pickle.h"

namespace lancet {
namespace {

// data.pkl of a real state dict is a few hundred KiB; anything near this is not a state dict.
constexpr uint64_t kMaxPickleBytes = uint64_t{256} << 20;

std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 120)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
    if (s.size() > 120) out += "...";
    return out;
}

bool starts_with(std::span<const uint8_t> b, std::string_view magic, size_t at = 0) {
    return b.size() >= at + magic.size() &&
           std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

}  // namespace

uint64_t PthTensor::numel() const {
    uint64_t n = 1;
    for (int64_t s : shape) n *= static_cast<uint64_t>(s);
    return n;
}

bool PthTensor::is_contiguous() const {
    if (numel() == 0) return true;
    int64_t expected = 1;
    for (size_t d = shape.size(); d-- > 0;) {
        if (shape[d] != 1 && strides[d] != expected) return false;
        expected *= shape[d];
    }
    return true;
}

std::span<const uint8_t> PthTensor::contiguous_bytes(std::string_view file) const {
    if (!is_contiguous())
        fail(file, ": tensor '", name, "' is not contiguous (a strided view); use to_contiguous()");
    return {data(), static_cast<size_t>(nbytes())};
}

std::vector<uint8_t> PthTensor::to_contiguous() const {
    const size_t es = dtype_size(dtype);
    std::vector<uint8_t> out(nbytes());
    if (out.empty()) return out;
    if (is_contiguous()) {
        std::memcpy(out.data(), data(), out.size());
        return out;
    }
    // Odometer over the indices; `off` is the element offset of the current index from data().
    const size_t nd = shape.size();
    std::vector<int64_t> idx(nd, 0);
    uint64_t off = 0;
    for (uint8_t* dst = out.data(); dst < out.data() + out.size(); dst += es) {
        std::memcpy(dst, data() + off * es, es);
        for (size_t d = nd; d-- > 0;) {
            if (++idx[d] < shape[d]) {
                off += strides[d];
                break;
            }
            off -= static_cast<uint64_t>(strides[d]) * (shape[d] - 1);
            idx[d] = 0;
        }
    }
    return out;
}

PthFile::PthFile(const std::string& path)
    : label_(path),
      file_(std::make_unique<MappedFile>(path)),
      bytes_(file_->data(), file_->size()) {
    parse();
}

PthFile::PthFile(std::string label, std::span<const uint8_t> bytes)
    : label_(std::move(label)), bytes_(bytes) {
    parse();
}

PthFile::~PthFile() = default;

void PthFile::release(std::span<const uint8_t> bytes) const {
    if (!file_ || bytes.empty()) return;
    const uint8_t* base = file_->data();
    if (bytes.data() < base || bytes.data() + bytes.size() > base + file_->size()) return;
    file_->release(static_cast<size_t>(bytes.data() - base), bytes.size());
}

void PthFile::parse() {
    if (!starts_with(bytes_, "PK\x03\x04")) {
        // torch < 1.6 wrote a pickled magic number (LONG1 0x1950a86a20f9469cfc6c) or a tar.
        if (starts_with(bytes_, "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 2) ||
            starts_with(bytes_, "ustar", 257))
            fail(label_,
                 ": legacy (pre-1.6) torch format is not supported; re-save it with "
                 "torch >= 1.6 or convert it to safetensors");
        fail(label_, ": not a PyTorch zip checkpoint (no zip signature at the start)");
    }
    zip_ = std::make_unique<ZipReader>(label_, bytes_);
    const auto& entries = zip_->entries();
    if (entries.empty()) fail(label_, ": zip archive has no entries");
    // Like torch's reader, the first entry's folder is the archive prefix.
    const std::string& first = entries.front().name;
    const size_t slash = first.find('/');
    if (slash == std::string::npos || slash == 0)
        fail(label_, ": not a torch checkpoint (entry '", printable(first),
             "' is not in a folder)");
    prefix_ = first.substr(0, slash);
    const std::string dir = prefix_ + "/";

    const ZipEntry* pkl = zip_->find(dir + "data.pkl");
    if (!pkl) {
        if (zip_->find(dir + "constants.pkl"))
            fail(label_, ": a TorchScript archive, not a torch.save state dict");
        fail(label_, ": not a torch checkpoint (no entry '", printable(dir), "data.pkl')");
    }
    if (const ZipEntry* bo = zip_->find(dir + "byteorder")) {
        const auto v = zip_->read(*bo, 64);
        const std::string order(v.begin(), v.end());
        if (order == "big")
            fail(label_, ": big-endian checkpoint (byteorder 'big') is not supported");
        if (order != "little") fail(label_, ": unknown byteorder record '", printable(order), "'");
    }  // absent: written by torch < 1.13 on a little-endian machine, like every x86/ARM host

    const std::vector<uint8_t> pkl_bytes = zip_->read(*pkl, kMaxPickleBytes);
    StateDictPickle sd = unpickle_state_dict(label_ + ": data.pkl", pkl_bytes);

    std::vector<std::span<const uint8_t>> storages;
    storages.reserve(sd.storages.size());
    for (const PickledStorage& s : sd.storages) {
        const std::string entry = dir + "data/" + s.key;
        const ZipEntry* e = zip_->find(entry);
        if (!e)
            fail(label_, ": storage '", printable(s.key), "' (entry '", printable(entry),
                 "') is missing");
        const auto bytes = zip_->stored_data(*e);
        if (bytes.size() != s.nbytes())
            fail(label_, ": storage '", printable(s.key), "' holds ", bytes.size(),
                 " bytes but data.pkl declares ", s.numel, " ", dtype_name(s.dtype), " elements (",
                 s.nbytes(), " bytes)");
        storages.push_back(bytes);
    }
    tensors_.reserve(sd.tensors.size());
    for (PickledTensor& t : sd.tensors) {
        PthTensor out;
        out.name = std::move(t.name);
        out.dtype = t.dtype;
        out.shape = std::move(t.shape);
        out.strides = std::move(t.strides);
        out.storage_offset = t.storage_offset;
        out.storage_key = sd.storages[t.storage].key;
        out.storage = storages[t.storage];
        by_name_.emplace(out.name, tensors_.size());
        tensors_.push_back(std::move(out));
    }
}

const PthTensor* PthFile::find(std::string_view name) const {
    auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const PthTensor& PthFile::at(std::string_view name) const {
    const PthTensor* t = find(name);
    if (!t) fail(label_, ": no tensor '", name, "'");
    return *t;
}

std::vector<PthTensor> PthFile::under(std::string_view prefix) const {
    const std::string p = std::string(prefix) + ".";
    std::vector<PthTensor> out;
    for (const PthTensor& t : tensors_) {
        if (t.name.size() > p.size() && t.name.compare(0, p.size(), p) == 0) {
            out.push_back(t);
            out.back().name.erase(0, p.size());
        }
    }
    return out;
}

bool PthFile::verify_crc() const {
    const std::string dir = prefix_ + "/data/";
    for (const ZipEntry& e : zip_->entries())
        if (e.name.compare(0, dir.size(), dir) == 0 && !zip_->crc_matches(e)) return false;
    return true;
}

PthSource::PthSource(const std::string& path) : file_(path) {
    for (const PthTensor& t : file_.tensors()) names_.push_back(t.name);
}

TensorInfo PthSource::info(const std::string& name) const {
    const PthTensor& t = file_.at(name);
    return {t.dtype, Shape(t.shape.begin(), t.shape.end()), t.nbytes()};
}

TensorView PthSource::get(const std::string& name) const {
    const PthTensor& t = file_.at(name);
    TensorView v;
    v.dtype = t.dtype;
    v.shape.assign(t.shape.begin(), t.shape.end());
    if (t.is_contiguous()) {
        const std::span<const uint8_t> b = t.contiguous_bytes(file_.label());
        v.data = b.data();
        v.nbytes = b.size();
        return v;
    }
    const std::lock_guard<std::mutex> lock(gathered_mutex_);
    auto it = gathered_.find(name);
    if (it == gathered_.end()) it = gathered_.emplace(name, t.to_contiguous()).first;
    v.data = it->second.data();
    v.nbytes = it->second.size();
    return v;
}

const std::string& PthSource::file_of(const std::string& name) const {
    file_.at(name);  // throws naming the file when absent
    return file_.label();
}

}  // namespace lancet
