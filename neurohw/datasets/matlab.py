"""A reader of MATLAB 5 MAT-files (the format of `save -v6` and `-v7`, SVHN's train_32x32.mat and
test_32x32.mat), for numeric arrays, without SciPy.

The format (MathWorks, "MAT-File Format", Level 5): a 128-byte header (116 bytes of text beginning
"MATLAB 5.0 MAT-file", 8 bytes of subsystem offset, the version 0x0100 and the endian indicator "IM"
for little-endian, "MI" for big-endian), then data elements. Each element is an 8-byte tag (data
type, byte count) followed by its data padded to 8 bytes, or a small element (byte count < 5 in the
tag's upper 16 bits, data in its last 4 bytes). A variable is an miMATRIX element (array flags with
the class, dimensions, name, real part) or an miCOMPRESSED element holding one zlib-compressed
miMATRIX. A numeric array's data may be stored in a narrower type than its class (a double array of
small integers as miUINT8), in column-major order. MATLAB 7.3 files are HDF5 and not read here.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

MI_MATRIX, MI_COMPRESSED = 14, 15
MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
MX_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse"}


class MatFileError(Exception):
    """A MAT-file that is not MATLAB 5 or is damaged; `variable` names the array when known."""

    def __init__(self, message: str, variable: str = ""):
        super().__init__(message)
        self.variable = variable


class _Elements:
    """The data elements of a buffer, in order."""

    def __init__(self, buf: bytes, endian: str, variable: str = ""):
        self.buf, self.e, self.pos, self.variable = buf, endian, 0, variable

    def next(self) -> tuple[int, bytes]:
        if self.pos + 8 > len(self.buf):
            raise MatFileError("a data element is cut short", self.variable)
        mtype, nbytes = struct.unpack_from(self.e + "II", self.buf, self.pos)
        if mtype >> 16:  # small data element: the byte count in the upper half of the first word
            nbytes, mtype = mtype >> 16, mtype & 0xFFFF
            data, self.pos = self.buf[self.pos + 4 : self.pos + 4 + nbytes], self.pos + 8
        else:
            data = self.buf[self.pos + 8 : self.pos + 8 + nbytes]
            self.pos += 8 + (-nbytes % 8) + nbytes
        if len(data) != nbytes:
            raise MatFileError("a data element is cut short", self.variable)
        return mtype, data


def _matrix_name(buf: bytes, endian: str) -> str:
    """The variable name of an miMATRIX element's data (flags, dims, name), '' if unreadable."""
    try:
        el = _Elements(buf, endian)
        el.next(), el.next()
        return el.next()[1].decode("ascii", "replace")
    except (MatFileError, struct.error):
        return ""


def _parse_matrix(buf: bytes, endian: str, wanted: set[str] | None) -> tuple[str, np.ndarray | None, str]:
    """(name, array or None if not wanted or not numeric, class name) of an miMATRIX element's data."""
    name = _matrix_name(buf, endian)
    el = _Elements(buf, endian, name)
    t, flags = el.next()
    if t != 6 or len(flags) != 8:
        raise MatFileError("its array flags are not an miUINT32 pair", name)
    word = struct.unpack(endian + "I", flags[:4])[0]
    cls, is_complex, logical = word & 0xFF, bool(word & 0x0800), bool(word & 0x0200)
    t, dims_raw = el.next()
    if t != 5:
        raise MatFileError("its dimensions are not miINT32", name)
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, endian + "i4"))
    el.next()  # the name, read above
    if cls not in MX_CLASSES:
        return name, None, MX_NAMES.get(cls, f"class {cls}")
    if wanted is not None and name not in wanted:
        return name, None, MX_CLASSES[cls]
    if is_complex:
        raise MatFileError("it is complex", name)
    t, data = el.next()
    if t not in MI_TYPES:
        raise MatFileError(f"its data has the unknown storage type {t}", name)
    values = np.frombuffer(data, endian + MI_TYPES[t])
    if values.size != int(np.prod(dims)):
        raise MatFileError(f"it holds {values.size} values but its dimensions {dims} need {int(np.prod(dims))}", name)
    dtype = np.bool_ if logical else np.dtype(MX_CLASSES[cls]).newbyteorder("=")
    return name, values.astype(dtype, copy=False).reshape(dims, order="F"), MX_CLASSES[cls]


def _inflate(payload: bytes, endian: str) -> bytes:
    """The miMATRIX element inside an miCOMPRESSED one; a damaged stream names the variable when its
    header still inflates."""
    d = zlib.decompressobj()
    try:
        head = d.decompress(payload, 256)
    except zlib.error as e:
        raise MatFileError(f"its zlib stream is damaged ({e})") from None
    name = _matrix_name(head[8:], endian) if len(head) >= 8 else ""
    try:
        rest = d.decompress(d.unconsumed_tail) + d.flush()
    except zlib.error as e:
        raise MatFileError(f"its zlib stream is damaged ({e})", name) from None
    if not d.eof:
        raise MatFileError("its zlib stream is cut short", name)
    return head + rest


def read_mat(path: str | Path, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """The numeric arrays of a MATLAB 5 MAT-file (`wanted`: only these names), in MATLAB's shape."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 128:
        raise MatFileError("it is shorter than the 128-byte MAT-file header")
    text = data[:116]
    if text.startswith(b"MATLAB 7.3"):
        raise MatFileError("it is a MATLAB 7.3 (HDF5) MAT-file; save it with -v7 or -v6 (MATLAB 5 format)")
    if not text.startswith(b"MATLAB 5.0 MAT-file"):
        raise MatFileError(f"it is not a MATLAB 5 MAT-file (its header starts {text[:20]!r})")
    endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if endian is None:
        raise MatFileError(f"its endian indicator is {data[126:128]!r}, not 'IM' or 'MI'")
    out, kinds = {}, {}
    pos = 128
    while pos < len(data):
        if pos + 8 > len(data):
            raise MatFileError("it ends inside a data element's tag")
        mtype, nbytes = struct.unpack_from(endian + "II", data, pos)
        payload = data[pos + 8 : pos + 8 + nbytes]
        if len(payload) != nbytes:
            name = _matrix_name(payload, endian) if mtype == MI_MATRIX else ""
            raise MatFileError(f"it is cut short: an element of {nbytes} bytes at byte {pos} has {len(payload)}", name)
        if mtype == MI_COMPRESSED:
            inner = _inflate(payload, endian)
            el = _Elements(inner, endian)
            mtype, payload = el.next()
            pos += 8 + nbytes
        else:
            pos += 8 + nbytes + (-nbytes % 8)
        if mtype != MI_MATRIX:
            continue  # not a variable (e.g. a subsystem element)
        name, array, kind = _parse_matrix(payload, endian, wanted)
        kinds[name] = kind
        if array is not None:
            out[name] = array
    for name in sorted(wanted or ()):
        if name not in out:
            if name in kinds:
                raise MatFileError(f"it is a MATLAB {kinds[name]} array, not a numeric one", name)
            raise MatFileError(f"it is not in the file (which holds: {', '.join(kinds) or 'nothing'})", name)
    return out
