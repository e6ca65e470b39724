// Implementation of the restricted unpickler: a pickle VM over an arena of inert values.
#include "io/torch_pickle.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"

namespace lancet {
namespace {

enum class Kind : uint8_t {
    None,
    Bool,
    Int,
    Float,
    Str,
    Tuple,
    List,
    Dict,
    Global,
    Storage,
    Tensor
};

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::None:
            return "None";
        case Kind::Bool:
            return "bool";
        case Kind::Int:
            return "int";
        case Kind::Float:
            return "float";
        case Kind::Str:
            return "str";
        case Kind::Tuple:
            return "tuple";
        case Kind::List:
            return "list";
        case Kind::Dict:
            return "dict";
        case Kind::Global:
            return "global";
        case Kind::Storage:
            return "storage";
        case Kind::Tensor:
            return "tensor";
    }
    return "?";
}

// The only globals a state dict needs. Each is interpreted here; none is ever looked up or run.
enum class Global : uint8_t {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    TypedStorage,    // torch.FloatStorage etc.; the dtype travels in Value::ref
    UntypedStorage,  // torch.UntypedStorage: bytes, numel counts bytes
    DTypeObject,     // torch.float32 etc.; the dtype travels in Value::ref
};

// A pickle value. Containers, strings, storages and tensors live in arenas owned by the
// unpickler and are referenced by index, so copies share identity (as Python references do),
// cycles are harmless, and destruction never recurses.
struct Value {
    Kind kind = Kind::None;
    uint32_t ref = 0;  // arena index (Str, Tuple, List, Dict, Storage, Tensor) or dtype (Global)
    int64_t i = 0;     // Int/Bool value, float bits, or the Global enumerator
};

struct Container {
    Kind kind;
    std::vector<Value> items;  // dicts store key, value, key, value, ...
    size_t depth = 1;
};

struct TensorObj {
    size_t storage;
    DType dtype;
    uint64_t offset;
    std::vector<int64_t> shape, strides;
};

struct StorageInfo {
    DType dtype;
    bool untyped;
};

// printable() keeps error messages one clean line whatever bytes a hostile pickle contains.
std::string printable(std::string_view s, size_t max = 80) {
    std::string out;
    for (size_t i = 0; i < s.size() && i < max; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
    }
    if (s.size() > max) out += "...";
    return out;
}

std::optional<DType> storage_dtype(std::string_view name) {
    static const std::pair<std::string_view, DType> kTable[] = {
        {"FloatStorage", DType::F32},
        {"DoubleStorage", DType::F64},
        {"HalfStorage", DType::F16},
        {"BFloat16Storage", DType::BF16},
        {"LongStorage", DType::I64},
        {"IntStorage", DType::I32},
        {"ShortStorage", DType::I16},
        {"CharStorage", DType::I8},
        {"ByteStorage", DType::U8},
        {"BoolStorage", DType::BOOL},
        {"Float8_e4m3fnStorage", DType::F8_E4M3},
        {"Float8_e5m2Storage", DType::F8_E5M2},
    };
    for (const auto& [n, t] : kTable)
        if (n == name) return t;
    return std::nullopt;
}

std::optional<DType> dtype_object(std::string_view name) {
    static const std::pair<std::string_view, DType> kTable[] = {
        {"float32", DType::F32},
        {"float", DType::F32},
        {"float64", DType::F64},
        {"double", DType::F64},
        {"float16", DType::F16},
        {"half", DType::F16},
        {"bfloat16", DType::BF16},
        {"int64", DType::I64},
        {"long", DType::I64},
        {"int32", DType::I32},
        {"int", DType::I32},
        {"int16", DType::I16},
        {"short", DType::I16},
        {"int8", DType::I8},
        {"uint8", DType::U8},
        {"bool", DType::BOOL},
        {"float8_e4m3fn", DType::F8_E4M3},
        {"float8_e5m2", DType::F8_E5M2},
    };
    for (const auto& [n, t] : kTable)
        if (n == name) return t;
    return std::nullopt;
}

class Unpickler {
  public:
    Unpickler(std::string_view context, std::span<const uint8_t> bytes, const UnpickleLimits& lim)
        : ctx_(context), in_(bytes), lim_(lim) {}

    StateDictPickle run();

  private:
    template <typename... A>
    [[noreturn]] void bad(const A&... a) const {
        fail(ctx_, ": ", a..., " (opcode at byte ", op_pos_, ")");
    }

    const uint8_t* take(uint64_t n) {
        if (n > in_.size() - pos_) bad("truncated pickle (needs ", n, " more bytes)");
        const uint8_t* p = in_.data() + pos_;
        pos_ += n;
        return p;
    }
    uint64_t le(int n) {
        const uint8_t* p = take(n);
        uint64_t v = 0;
        for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
        return v;
    }
    std::string_view line() {
        constexpr size_t kMax = 256;  // module and attribute names are short
        const uint8_t* start = in_.data() + pos_;
        const size_t avail = in_.size() - pos_;
        const void* nl = std::memchr(start, '\n', std::min(avail, kMax));
        if (!nl) bad("GLOBAL name is unterminated or longer than ", kMax, " bytes");
        const size_t n = static_cast<const uint8_t*>(nl) - start;
        pos_ += n + 1;
        return {reinterpret_cast<const char*>(start), n};
    }

    void push(Value v) {
        if (stack_.size() >= lim_.max_stack) bad("stack exceeds ", lim_.max_stack, " values");
        stack_.push_back(v);
    }
    Value pop() {
        if (stack_.size() <= floor()) bad("stack underflow");
        Value v = stack_.back();
        stack_.pop_back();
        return v;
    }
    Value& top() {
        if (stack_.size() <= floor()) bad("stack underflow");
        return stack_.back();
    }
    // Values below the innermost mark belong to an enclosing MARK and may not be popped singly.
    size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
    size_t pop_mark() {
        if (marks_.empty()) bad("MARK expected");
        const size_t m = marks_.back();
        marks_.pop_back();
        return m;
    }

    size_t depth_of(const Value& v) const {
        switch (v.kind) {
            case Kind::Tuple:
            case Kind::List:
            case Kind::Dict:
                return containers_[v.ref].depth;
            default:
                return 0;
        }
    }
    Value new_container(Kind k, std::vector<Value> items = {}) {
        size_t d = 1;
        for (const auto& it : items) d = std::max(d, depth_of(it) + 1);
        if (d > lim_.max_depth) bad("containers nested deeper than ", lim_.max_depth);
        count_items(items.size());
        count_object();
        containers_.push_back(Container{k, std::move(items), d});
        return Value{k, static_cast<uint32_t>(containers_.size() - 1), 0};
    }
    void count_items(size_t n) {
        total_items_ += n;
        if (total_items_ > lim_.max_items)
            bad("more than ", lim_.max_items, " values in containers");
    }
    void count_object() {
        if (++objects_ > lim_.max_objects) bad("more than ", lim_.max_objects, " objects");
    }
    void add_to(const Value& target, Kind want, const Value* items, size_t n) {
        if (target.kind != want)
            bad(want == Kind::List ? "APPEND" : "SETITEM", " target is a ", kind_name(target.kind),
                ", not a ", kind_name(want));
        Container& c = containers_[target.ref];
        size_t d = c.depth;
        for (size_t k = 0; k < n; ++k) d = std::max(d, depth_of(items[k]) + 1);
        if (d > lim_.max_depth) bad("containers nested deeper than ", lim_.max_depth);
        count_items(n);
        c.depth = d;
        c.items.insert(c.items.end(), items, items + n);
    }
    Value new_string(std::string_view s) {
        if (s.size() > lim_.max_string) bad("string of ", s.size(), " bytes exceeds the limit");
        count_object();
        strings_.emplace_back(s);
        return Value{Kind::Str, static_cast<uint32_t>(strings_.size() - 1), 0};
    }
    Value read_string(uint64_t len) {
        if (len > lim_.max_string)
            bad("string of ", len, " bytes exceeds the limit of ", lim_.max_string);
        const uint8_t* p = take(len);
        return new_string({reinterpret_cast<const char*>(p), static_cast<size_t>(len)});
    }
    Value read_long(uint64_t n) {
        if (n > 8) bad("integer of ", n, " bytes is too large");
        const uint8_t* p = take(n);
        uint64_t v = 0;
        for (uint64_t k = n; k-- > 0;) v = (v << 8) | p[k];
        if (n > 0 && n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        return Value{Kind::Int, 0, static_cast<int64_t>(v)};
    }
    void memo_put(uint64_t idx) {
        const Value v = top();
        auto it = memo_.find(idx);
        if (it != memo_.end()) {
            it->second = v;
            return;
        }
        if (memo_.size() >= lim_.max_memo) bad("memo exceeds ", lim_.max_memo, " entries");
        memo_.emplace(idx, v);
    }
    void memo_get(uint64_t idx) {
        auto it = memo_.find(idx);
        if (it == memo_.end()) bad("memo entry ", idx, " is not defined");
        push(it->second);
    }

    const std::string& str(const Value& v) const { return strings_[v.ref]; }
    const std::vector<Value>& tuple_items(const Value& v, const char* what) const {
        if (v.kind != Kind::Tuple) bad(what, " must be a tuple, got ", kind_name(v.kind));
        return containers_[v.ref].items;
    }
    int64_t int_arg(const Value& v, const char* what) const {
        if (v.kind != Kind::Int) bad(what, " must be an int, got ", kind_name(v.kind));
        return v.i;
    }

    Value resolve_global(std::string_view module, std::string_view name);
    Value reduce(const Value& callable, const Value& args);
    Value rebuild_tensor(const std::vector<Value>& a, bool v3);
    Value persistent_load(const Value& pid);
    void walk(const Value& v, std::string& name, size_t depth, StateDictPickle& out);

    std::string_view ctx_;
    std::span<const uint8_t> in_;
    UnpickleLimits lim_;
    size_t pos_ = 0, op_pos_ = 0;
    std::vector<Value> stack_;
    std::vector<size_t> marks_;
    std::unordered_map<uint64_t, Value> memo_;
    std::vector<Container> containers_;
    std::vector<std::string> strings_;
    std::vector<TensorObj> tensors_;
    std::vector<StorageInfo> storage_info_;
    StateDictPickle result_;
    std::unordered_map<std::string, size_t> storage_by_key_;
    size_t total_items_ = 0, objects_ = 0, walked_ = 0;
    std::unordered_set<std::string> names_;
};

Value Unpickler::resolve_global(std::string_view module, std::string_view name) {
    auto g = [](Global x, DType t = DType::U8) {
        return Value{Kind::Global, static_cast<uint32_t>(t), static_cast<int64_t>(x)};
    };
    if (module == "collections" && name == "OrderedDict") return g(Global::OrderedDict);
    if (module == "torch._utils") {
        if (name == "_rebuild_tensor_v2") return g(Global::RebuildTensorV2);
        if (name == "_rebuild_tensor_v3") return g(Global::RebuildTensorV3);
        if (name == "_rebuild_parameter") return g(Global::RebuildParameter);
        if (name == "_rebuild_parameter_with_state") return g(Global::RebuildParameterWithState);
    }
    if (module == "torch" || module == "torch.storage") {
        if (name == "UntypedStorage") return g(Global::UntypedStorage);
    }
    if (module == "torch") {
        if (auto t = storage_dtype(name)) return g(Global::TypedStorage, *t);
        if (auto t = dtype_object(name)) return g(Global::DTypeObject, *t);
    }
    fail(ctx_, ": refusing global ", printable(module), ".", printable(name),
         " (only state-dict types are allowed)");
}

Value Unpickler::reduce(const Value& callable, const Value& args_v) {
    if (callable.kind != Kind::Global)
        bad("REDUCE applied to a ", kind_name(callable.kind), ", not an allowed callable");
    const std::vector<Value> args = tuple_items(args_v, "REDUCE arguments");
    switch (static_cast<Global>(callable.i)) {
        case Global::OrderedDict:
            if (!args.empty()) bad("collections.OrderedDict called with arguments");
            return new_container(Kind::Dict);
        case Global::RebuildTensorV2:
            return rebuild_tensor(args, false);
        case Global::RebuildTensorV3:
            return rebuild_tensor(args, true);
        case Global::RebuildParameter:
        case Global::RebuildParameterWithState: {
            const size_t want = static_cast<Global>(callable.i) == Global::RebuildParameter ? 3 : 4;
            if (args.size() != want || args[0].kind != Kind::Tensor)
                bad("_rebuild_parameter expects (tensor, requires_grad, hooks",
                    want == 4 ? ", state" : "", "), got ", args.size(), " arguments");
            return args[0];  // a Parameter's bytes are its data tensor's
        }
        default:
            bad("a storage type or dtype is not callable here");
    }
}

Value Unpickler::persistent_load(const Value& pid) {
    // torch: ('storage', torch.<T>Storage, key, location, numel); the legacy writer appended a
    // sixth view_metadata field, accepted when None.
    const std::vector<Value>& a = tuple_items(pid, "persistent id");
    if (a.size() < 5 || a.size() > 6 || a[0].kind != Kind::Str || str(a[0]) != "storage" ||
        a[1].kind != Kind::Global || a[2].kind != Kind::Str || a[3].kind != Kind::Str ||
        a[4].kind != Kind::Int || (a.size() == 6 && a[5].kind != Kind::None))
        bad("persistent id is not ('storage', type, key, location, numel)");
    const auto g = static_cast<Global>(a[1].i);
    if (g != Global::TypedStorage && g != Global::UntypedStorage)
        bad("persistent id names a non-storage type");
    const DType dtype = static_cast<DType>(a[1].ref);
    const int64_t numel = a[4].i;
    if (numel < 0 || static_cast<uint64_t>(numel) > (uint64_t{1} << 60) / dtype_size(dtype))
        bad("storage '", printable(str(a[2])), "' has invalid numel ", numel);
    const std::string& key = str(a[2]);
    auto it = storage_by_key_.find(key);
    if (it != storage_by_key_.end()) {
        const PickledStorage& s = result_.storages[it->second];
        if (s.dtype != dtype || s.numel != static_cast<uint64_t>(numel))
            bad("storage '", printable(key), "' is referenced with inconsistent dtype or size");
        return Value{Kind::Storage, static_cast<uint32_t>(it->second), 0};
    }
    result_.storages.push_back(PickledStorage{key, str(a[3]), dtype, static_cast<uint64_t>(numel)});
    storage_info_.push_back(StorageInfo{dtype, g == Global::UntypedStorage});
    storage_by_key_.emplace(key, result_.storages.size() - 1);
    return Value{Kind::Storage, static_cast<uint32_t>(result_.storages.size() - 1), 0};
}

Value Unpickler::rebuild_tensor(const std::vector<Value>& a, bool v3) {
    // v2: (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    // v3: (storage, offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    const size_t min_args = v3 ? 7 : 6;
    if (a.size() < min_args || a.size() > min_args + 1)
        bad("_rebuild_tensor_v", v3 ? 3 : 2, " called with ", a.size(), " arguments");
    if (a[0].kind != Kind::Storage) bad("tensor storage must be a persistent storage");
    const size_t sidx = a[0].ref;
    const StorageInfo& si = storage_info_[sidx];
    DType dtype = si.dtype;
    if (v3) {
        if (a[6].kind != Kind::Global || static_cast<Global>(a[6].i) != Global::DTypeObject)
            bad("_rebuild_tensor_v3 dtype argument is not a torch dtype");
        dtype = static_cast<DType>(a[6].ref);
        if (!si.untyped && dtype != si.dtype)
            bad("tensor dtype ", dtype_name(dtype), " differs from its storage's ",
                dtype_name(si.dtype));
    }
    const int64_t offset = int_arg(a[1], "storage offset");
    const auto& size = tuple_items(a[2], "tensor size");
    const auto& stride = tuple_items(a[3], "tensor stride");
    if (size.size() != stride.size())
        bad("tensor size has ", size.size(), " dims but stride has ", stride.size());
    if (size.size() > lim_.max_dims) bad("tensor rank ", size.size(), " exceeds ", lim_.max_dims);
    if (offset < 0) bad("negative storage offset ", offset);
    TensorObj t{sidx, dtype, static_cast<uint64_t>(offset), {}, {}};
    bool empty = false;
    for (size_t d = 0; d < size.size(); ++d) {
        const int64_t n = int_arg(size[d], "tensor size"), s = int_arg(stride[d], "tensor stride");
        if (n < 0 || s < 0) bad("negative tensor size or stride");
        empty |= n == 0;
        t.shape.push_back(n);
        t.strides.push_back(s);
    }
    // Every element must lie inside the storage: offset + sum((size-1)*stride) < numel. Stopping
    // at the first term past the end keeps the 128-bit sum far from overflow.
    const uint64_t storage_elems = result_.storages[sidx].nbytes() / dtype_size(dtype);
    unsigned __int128 last = t.offset, numel = 1;
    for (size_t d = 0; d < t.shape.size() && !empty && last < storage_elems; ++d)
        last +=
            static_cast<unsigned __int128>(t.shape[d] - 1) * static_cast<uint64_t>(t.strides[d]);
    // Stride-0 (expanded) tensors may have more elements than their storage; bound the count so
    // byte sizes derived from it cannot overflow.
    for (size_t d = 0; d < t.shape.size() && numel <= (uint64_t{1} << 60); ++d)
        numel *= static_cast<uint64_t>(t.shape[d]);
    if (numel > (uint64_t{1} << 60) / dtype_size(dtype)) bad("tensor has too many elements");
    if (empty ? last > storage_elems : last >= storage_elems)
        bad("tensor (offset ", offset, ") reaches past the end of storage '",
            printable(result_.storages[sidx].key), "' (", storage_elems, " elements)");
    count_object();
    tensors_.push_back(std::move(t));
    return Value{Kind::Tensor, static_cast<uint32_t>(tensors_.size() - 1), 0};
}

void Unpickler::walk(const Value& v, std::string& name, size_t depth, StateDictPickle& out) {
    if (++walked_ > lim_.max_walk) fail(ctx_, ": object graph too large to name its tensors");
    if (depth > lim_.max_depth) fail(ctx_, ": containers nested deeper than ", lim_.max_depth);
    const size_t base = name.size();
    auto child = [&](std::string_view key, const Value& c) {
        if (base + 1 + key.size() > lim_.max_name)
            fail(ctx_, ": tensor name '", printable(base ? name + "." + std::string(key) : key),
                 "' is longer than ", lim_.max_name, " bytes");
        if (base > 0) name += '.';
        name += key;
        walk(c, name, depth + 1, out);
        name.resize(base);
    };
    switch (v.kind) {
        case Kind::Tensor: {
            if (out.tensors.size() >= lim_.max_tensors)
                fail(ctx_, ": more than ", lim_.max_tensors, " tensors");
            if (!names_.insert(name).second)
                fail(ctx_, ": duplicate tensor name '", printable(name), "'");
            const TensorObj& t = tensors_[v.ref];
            out.tensors.push_back(
                PickledTensor{name, t.storage, t.dtype, t.offset, t.shape, t.strides});
            break;
        }
        case Kind::Dict: {
            const auto& items = containers_[v.ref].items;
            for (size_t k = 0; k + 1 < items.size(); k += 2) {
                const Value& key = items[k];
                if (key.kind == Kind::Str)
                    child(str(key), items[k + 1]);
                else if (key.kind == Kind::Int)
                    child(std::to_string(key.i), items[k + 1]);
                else
                    fail(ctx_, ": dict key of type ", kind_name(key.kind), " under '",
                         printable(name), "' is not supported");
            }
            break;
        }
        case Kind::List:
        case Kind::Tuple: {
            const auto& items = containers_[v.ref].items;
            for (size_t k = 0; k < items.size(); ++k) child(std::to_string(k), items[k]);
            break;
        }
        default:
            break;  // ints, strings, None... carry no tensor data
    }
}

StateDictPickle Unpickler::run() {
    bool stopped = false;
    while (!stopped) {
        op_pos_ = pos_;
        if (pos_ >= in_.size()) bad("pickle ends without STOP");
        const uint8_t op = in_[pos_++];
        switch (op) {
            case 0x80: {  // PROTO
                const uint8_t proto = static_cast<uint8_t>(le(1));
                if (proto < 2 || proto > 5) bad("unsupported pickle protocol ", int{proto});
                break;
            }
            case 0x95:
                le(8);
                break;  // FRAME: a length hint only
            case '.':
                stopped = true;
                break;
            case '(':
                if (marks_.size() >= lim_.max_stack) bad("too many MARKs");
                marks_.push_back(stack_.size());
                break;
            case '0':
                pop();
                break;
            case '1':
                stack_.resize(pop_mark());
                break;
            case '2':
                push(top());
                break;
            case 'N':
                push(Value{});
                break;
            case 0x88:
                push(Value{Kind::Bool, 0, 1});
                break;
            case 0x89:
                push(Value{Kind::Bool, 0, 0});
                break;
            case 'J':
                push(Value{Kind::Int, 0, static_cast<int32_t>(le(4))});
                break;
            case 'K':
                push(Value{Kind::Int, 0, static_cast<int64_t>(le(1))});
                break;
            case 'M':
                push(Value{Kind::Int, 0, static_cast<int64_t>(le(2))});
                break;
            case 0x8a:
                push(read_long(le(1)));
                break;  // LONG1
            case 0x8b:
                push(read_long(le(4)));
                break;   // LONG4 (length is signed; huge = bad)
            case 'G': {  // BINFLOAT: big-endian IEEE double
                const uint8_t* p = take(8);
                uint64_t bits = 0;
                for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
                push(Value{Kind::Float, 0, static_cast<int64_t>(bits)});
                break;
            }
            case 'X':
                push(read_string(le(4)));
                break;  // BINUNICODE
            case 0x8c:
                push(read_string(le(1)));
                break;  // SHORT_BINUNICODE
            case 0x8d:
                push(read_string(le(8)));
                break;  // BINUNICODE8
            case '}':
                push(new_container(Kind::Dict));
                break;
            case ']':
                push(new_container(Kind::List));
                break;
            case ')':
                push(new_container(Kind::Tuple));
                break;
            case 0x85:
            case 0x86:
            case 0x87: {  // TUPLE1..3
                const size_t n = op - 0x84u;
                if (stack_.size() < floor() + n) bad("stack underflow");
                std::vector<Value> items(stack_.end() - n, stack_.end());
                stack_.resize(stack_.size() - n);
                push(new_container(Kind::Tuple, std::move(items)));
                break;
            }
            case 't':
            case 'l':
            case 'd': {  // TUPLE, LIST, DICT from the items above the mark
                const size_t m = pop_mark();
                std::vector<Value> items(stack_.begin() + m, stack_.end());
                stack_.resize(m);
                if (op == 'd' && items.size() % 2) bad("DICT with an odd number of items");
                push(new_container(op == 't'   ? Kind::Tuple
                                   : op == 'l' ? Kind::List
                                               : Kind::Dict,
                                   std::move(items)));
                break;
            }
            case 'a': {  // APPEND
                const Value v = pop();
                add_to(top(), Kind::List, &v, 1);
                break;
            }
            case 's': {  // SETITEM
                Value kv[2];
                kv[1] = pop();
                kv[0] = pop();
                add_to(top(), Kind::Dict, kv, 2);
                break;
            }
            case 'e':
            case 'u': {  // APPENDS, SETITEMS
                const size_t m = pop_mark();
                if (m == 0 || m <= floor()) bad("no container below the MARK");
                const size_t n = stack_.size() - m;
                if (op == 'u' && n % 2) bad("SETITEMS with an odd number of items");
                const Value target = stack_[m - 1];
                add_to(target, op == 'e' ? Kind::List : Kind::Dict, stack_.data() + m, n);
                stack_.resize(m);
                break;
            }
            case 'q':
                memo_put(le(1));
                break;  // BINPUT
            case 'r':
                memo_put(le(4));
                break;  // LONG_BINPUT
            case 0x94:
                memo_put(memo_.size());
                break;  // MEMOIZE
            case 'h':
                memo_get(le(1));
                break;  // BINGET
            case 'j':
                memo_get(le(4));
                break;   // LONG_BINGET
            case 'c': {  // GLOBAL module\nname\n
                const std::string module(line());
                const std::string name(line());
                push(resolve_global(module, name));
                break;
            }
            case 0x93: {  // STACK_GLOBAL
                const Value name = pop(), module = pop();
                if (name.kind != Kind::Str || module.kind != Kind::Str)
                    bad("STACK_GLOBAL needs two strings");
                push(resolve_global(str(module), str(name)));
                break;
            }
            case 'R': {  // REDUCE
                const Value args = pop(), callable = pop();
                push(reduce(callable, args));
                break;
            }
            case 'b': {  // BUILD: only the _metadata torch attaches to an OrderedDict
                pop();
                const Kind k = top().kind;
                if (k != Kind::Dict && k != Kind::Tensor)
                    bad("BUILD on a ", kind_name(k), " is not supported");
                break;
            }
            case 'Q':
                push(persistent_load(pop()));
                break;  // BINPERSID
            default: {
                static const char* hex = "0123456789abcdef";
                const char code[] = {'0', 'x', hex[op >> 4], hex[op & 15], 0};
                bad("unsupported pickle opcode ", code);
            }
        }
    }
    if (stack_.size() != 1 || !marks_.empty())
        bad("STOP with ", stack_.size(), " values and ", marks_.size(), " open MARKs on the stack");
    const Value root = stack_.back();
    if (root.kind != Kind::Dict)
        fail(ctx_, ": top-level object is a ", kind_name(root.kind), ", not a dict of tensors");
    StateDictPickle out;
    std::string name;
    walk(root, name, 0, out);
    out.storages = std::move(result_.storages);
    return out;
}

}  // namespace

StateDictPickle unpickle_state_dict(std::string_view context, std::span<const uint8_t> pkl,
                                    const UnpickleLimits& limits) {
    return Unpickler(context, pkl, limits).run();
}

}  // namespace lancet
