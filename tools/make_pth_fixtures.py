#!/usr/bin/env python3
"""Writes the tiny torch.save-format fixtures in tests/data/pth/ (dev-only; run from the repo root).

torch is not installed on the development machine, so this script reproduces what torch.save
writes without it: the pickle comes from CPython's own pickler (protocol 2, torch's default; one
fixture uses protocol 4), with stand-in objects registered under torch's module names so the
opcode stream names torch._utils._rebuild_tensor_v2, torch.FloatStorage, ... exactly as torch's
does, and storages become persistent ids ('storage', <type>, key, 'cpu', numel) with keys "0",
"1", ... in first-use order. The zip layout follows PyTorchStreamWriter (miniz): every record in
one top-level folder, stored, data 64-byte aligned through an "FB" padding extra field, optional
ZIP64 records. One fixture is written by Python's zipfile instead (deflated data.pkl) so the reader
is also checked against an independent zip writer.

Tensor values follow formulas that tests/pth_test.cc recomputes (keep the two in sync):
storage element i of a storage with seed k is
  float types: ((i*37 + k*11) % 101 - 50.5) / 7  (double; F32 = nearest float, F16 and BF16 are
               rounded from that float, ties to even)
  I64: ((i*2654435761 + k*97) % 1000003 - 500001) * 1234567
  I32: (i*7919 + k*13) % 200003 - 100001       I16: (i*31 + k*7) % 60001 - 30000
  I8:  (i*13 + k*5) % 255 - 127                 U8:  (i*29 + k*3) % 256
  BOOL: (i*5 + k) % 3 != 0
"""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "pth")

# --- stand-ins for the torch names a state-dict pickle references -------------------------------

if "torch" in sys.modules or any(os.path.isdir(os.path.join(p, "torch")) for p in sys.path if p):
    sys.exit("refusing to shadow a real torch installation; run with a python that lacks torch")
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _stand_in_function(module, name):
    def f(*args):
        raise RuntimeError("stand-in, never called")

    f.__module__, f.__name__, f.__qualname__ = module.__name__, name, name
    setattr(module, name, f)
    return f


_rebuild_tensor_v2 = _stand_in_function(torch_utils, "_rebuild_tensor_v2")
_rebuild_parameter = _stand_in_function(torch_utils, "_rebuild_parameter")

STORAGE_TYPE = {}
for dtype, cls_name in [("F32", "FloatStorage"), ("F64", "DoubleStorage"), ("F16", "HalfStorage"),
                        ("BF16", "BFloat16Storage"), ("I64", "LongStorage"), ("I32", "IntStorage"),
                        ("I16", "ShortStorage"), ("I8", "CharStorage"), ("U8", "ByteStorage"),
                        ("BOOL", "BoolStorage")]:
    cls = type(cls_name, (), {})
    cls.__module__ = "torch"
    setattr(torch, cls_name, cls)
    STORAGE_TYPE[dtype] = cls

ELEM_SIZE = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bf16_bits(x):
    u = struct.unpack("<I", struct.pack("<f", f32(x)))[0]
    u += 0x7FFF + ((u >> 16) & 1)  # round to nearest, ties to even (no NaNs here)
    return (u >> 16) & 0xFFFF


def element_bytes(dtype, k, i):
    if dtype in ("F32", "F64", "F16", "BF16"):
        v = ((i * 37 + k * 11) % 101 - 50.5) / 7.0
        if dtype == "F32":
            return struct.pack("<f", v)
        if dtype == "F64":
            return struct.pack("<d", v)
        if dtype == "F16":
            return struct.pack("<e", f32(v))
        return struct.pack("<H", bf16_bits(v))
    if dtype == "I64":
        return struct.pack("<q", ((i * 2654435761 + k * 97) % 1000003 - 500001) * 1234567)
    if dtype == "I32":
        return struct.pack("<i", (i * 7919 + k * 13) % 200003 - 100001)
    if dtype == "I16":
        return struct.pack("<h", (i * 31 + k * 7) % 60001 - 30000)
    if dtype == "I8":
        return struct.pack("<b", (i * 13 + k * 5) % 255 - 127)
    if dtype == "U8":
        return struct.pack("<B", (i * 29 + k * 3) % 256)
    return struct.pack("<B", 1 if (i * 5 + k) % 3 != 0 else 0)


class Storage:
    def __init__(self, dtype, seed, numel):
        self.dtype, self.seed, self.numel = dtype, seed, numel
        self.data = b"".join(element_bytes(dtype, seed, i) for i in range(numel))


class Tensor:
    def __init__(self, storage, shape, stride=None, offset=0):
        if stride is None:
            stride, acc = [], 1
            for n in reversed(shape):
                stride.insert(0, acc)
                acc *= n
        self.storage, self.shape, self.stride, self.offset = storage, shape, stride, offset

    def __reduce_ex__(self, proto):  # what torch.Tensor._reduce_ex_internal returns for CPU
        return (_rebuild_tensor_v2, (self.storage, self.offset, tuple(self.shape),
                                     tuple(self.stride), False, collections.OrderedDict()))


class Parameter:
    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, proto):
        return (_rebuild_parameter, (self.data, True, collections.OrderedDict()))


def torch_pickle(obj, protocol=2):
    """data.pkl bytes and the storages in key order, as torch.serialization._save produces."""
    keys = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                key = keys.setdefault(id(o), (str(len(keys)), o))[0]
                return ("storage", STORAGE_TYPE[o.dtype], key, "cpu", o.numel)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue(), [s for _, s in sorted(keys.values(), key=lambda ks: int(ks[0]))]


# --- zip writing in PyTorchStreamWriter's layout -------------------------------------------------

def torch_zip(prefix, records, zip64=False, lho_override=None, size_override=None,
              local_name_override=None):
    """records: [(name, bytes)], stored. The overrides corrupt one entry (for the malicious
    fixtures): its central-directory header offset, its declared size (local and central), or the
    name in its local header."""
    out, central = bytearray(), []
    for name, data in records:
        full = f"{prefix}/{name}".encode()
        lho, crc = len(out), zlib.crc32(data)
        z64 = struct.pack("<HHQQ", 1, 16, len(data), len(data)) if zip64 else b""
        pad = -(lho + 30 + len(full) + len(z64) + 4) % 64
        extra = z64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        size = (size_override or {}).get(name, len(data))
        size32 = 0xFFFFFFFF if zip64 else size
        local_name = (local_name_override or {}).get(name, full)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, 0, 0, 0x21, crc,
                           size32, size32, len(local_name), len(extra)) + local_name + extra + data
        central.append((full, crc, size, lho, name))
    cd_off = len(out)
    for full, crc, size, lho, name in central:
        if lho_override and name in lho_override:
            lho = lho_override[name]
        if zip64:
            extra = struct.pack("<HHQQQ", 1, 24, size, size, lho)
            size32 = lho32 = 0xFFFFFFFF
        else:
            extra, size32, lho32 = b"", size, lho
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 45 if zip64 else 20, 0, 0,
                           0, 0x21, crc, size32, size32, len(full), len(extra), 0, 0, 0, 0,
                           lho32) + full + extra
    cd_size, n = len(out) - cd_off, len(central)
    if zip64:
        rec = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, n, n, cd_size, cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, rec, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_off, 0)
    return bytes(out)


def torch_records(obj, protocol=2, byteorder="little", pkl=None, drop=(), storage_trim=None):
    data_pkl, storages = torch_pickle(obj, protocol)
    records = [("data.pkl", pkl if pkl is not None else data_pkl)]
    if byteorder is not None:
        records.append(("byteorder", byteorder.encode()))
    for key, s in enumerate(storages):
        data = s.data if storage_trim is None or key != storage_trim else s.data[:-1]
        if str(key) not in drop:
            records.append((f"data/{key}", data))
    records += [("version", b"3\n"), (".data/serialization_id", b"1234567890")]
    return records


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


# --- the fixtures --------------------------------------------------------------------------------

def state_dict():
    """Like nn.Module.state_dict(): an OrderedDict carrying _metadata (pickled through BUILD)."""
    seed = iter(range(1, 100))
    sd = collections.OrderedDict()
    sd["conv.weight"] = Tensor(Storage("F32", next(seed), 324), [4, 3, 3, 3, 3])
    sd["conv.bias"] = Tensor(Storage("F32", next(seed), 4), [4])
    sd["norm.gamma"] = Tensor(Storage("F16", next(seed), 4), [4, 1, 1, 1])
    sd["proj.weight"] = Tensor(Storage("BF16", next(seed), 30), [6, 5])
    sd["scale"] = Tensor(Storage("F32", next(seed), 1), [])
    sd["steps"] = Tensor(Storage("I64", next(seed), 3), [3])
    sd["mask"] = Tensor(Storage("BOOL", next(seed), 6), [2, 3])
    sd["bytes"] = Tensor(Storage("U8", next(seed), 7), [7])
    sd["ints"] = Tensor(Storage("I32", next(seed), 5), [5])
    sd["f64"] = Tensor(Storage("F64", next(seed), 4), [2, 2])
    sd["i16"] = Tensor(Storage("I16", next(seed), 3), [3])
    sd["i8"] = Tensor(Storage("I8", next(seed), 4), [4])
    shared = Storage("F32", next(seed), 16)  # three views of one storage
    sd["shared.a"] = Tensor(shared, [2, 3])
    sd["shared.b"] = Tensor(shared, [4], offset=6)
    sd["shared.t"] = Tensor(shared, [3, 2], stride=[1, 3], offset=10)  # transposed, strided
    sd["empty"] = Tensor(Storage("F32", next(seed), 0), [0, 3])
    sd._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("conv", {"version": 1}), ("norm", {"version": 2})])
    return sd


def nested():
    """A training checkpoint wrapping the weights, with assorted non-tensor values."""
    inner = collections.OrderedDict()
    inner["w"] = Tensor(Storage("F32", 41, 6), [2, 3])
    inner["b"] = Tensor(Storage("BF16", 42, 2), [2])
    inner._metadata = collections.OrderedDict([("", {"version": 1})])
    return {
        "epoch": 7, "lr": 0.25, "name": "vae", "flags": [True, False, None],
        "big": 2 ** 40, "neg": -5, "ints": (1, 300, 70000),
        "state_dict": inner,
        "ema": {"w": Tensor(Storage("F16", 43, 6), [3, 2])},
        "param": Parameter(Tensor(Storage("F32", 44, 3), [3])),
        "list": [Tensor(Storage("I64", 45, 2), [2]), Tensor(Storage("U8", 46, 5), [5])],
    }


def python_zipfile(records):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in records:
            method = zipfile.ZIP_DEFLATED if name.endswith(".pkl") else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo("archive/" + name), data, compress_type=method)
    return buf.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    good = {
        "state_dict.pth": torch_zip("state_dict", torch_records(state_dict())),
        "nested.pth": torch_zip("archive", torch_records(nested())),
        "proto4.pth": torch_zip("archive", torch_records(nested(), protocol=4)),
        "zip64.pth": torch_zip("archive", torch_records(state_dict()), zip64=True),
        "pyzip.pth": python_zipfile(torch_records(nested(), byteorder=None)),
    }
    for name, data in good.items():
        with zipfile.ZipFile(io.BytesIO(data)) as z:  # an independent reader accepts them
            assert z.testzip() is None, name
        write(name, data)

    evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
    recs = torch_records(state_dict())
    write("evil_global.pth", torch_zip("archive", torch_records(state_dict(), pkl=evil)))
    write("bad_offset.pth", torch_zip("archive", recs, lho_override={"data/3": 0x7FFFFF00}))
    write("data_outside.pth", torch_zip("archive", recs, size_override={"data/2": 0x10000000}))
    write("into_cd.pth", torch_zip("archive", recs, size_override={".data/serialization_id": 40}))
    write("overlap.pth", torch_zip("archive", recs, size_override={"data/2": 8 + 64}))
    write("name_mismatch.pth", torch_zip("archive", recs,
                                         local_name_override={"data/1": b"archive/data/9"}))
    write("truncated.pth", good["state_dict.pth"][: len(good["state_dict.pth"]) // 2])
    write("big_endian.pth", torch_zip("archive", torch_records(nested(), byteorder="big")))
    write("missing_storage.pth", torch_zip("archive", torch_records(nested(), drop=("1",))))
    write("short_storage.pth", torch_zip("archive", torch_records(nested(), storage_trim=0)))
    past_end = {"w": Tensor(Storage("F32", 1, 4), [4], offset=2)}
    write("past_storage.pth", torch_zip("archive", torch_records(past_end)))
    magic, sys_info = 0x1950A86A20F9469CFC6C, {"protocol_version": 1001, "little_endian": True}
    write("legacy.pth", pickle.dumps(magic, 2) + pickle.dumps(1001, 2) + pickle.dumps(sys_info, 2))


if __name__ == "__main__":
    main()
