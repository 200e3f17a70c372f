"""One safetensors file, written crash-safely and read back verified.

Both checkpoint writers (`pyengine.save` and `pyengine.io.save`, which the
training commands use) go through `write`; both readers through `read`.

Writing: the bytes go to a temporary file in the same folder, which is
flushed, fsynced and renamed over the target (`os.replace`, atomic on POSIX),
and then the folder is fsynced so that the rename itself is durable. A
process killed at any moment leaves the previous file or the new one.

Verifying: the header's `__metadata__` carries a SHA-256 under
`pyengine.checksum`, computed over the canonical JSON of the rest of the
header (every tensor's name, dtype, shape and offsets, and the other
metadata) followed by the data section. The metadata stays a str -> str map,
so PyTorch and Hugging Face read the file as any other safetensors file.
`read` checks the header's layout (names, dtypes, shapes, offsets covering
the data exactly) and, when present, the checksum; a truncated, corrupted or
foreign file raises a one-line ValueError naming the path. Files without a
checksum (written by other programs) are read after the layout checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _arrays_from_bytes
from safetensors.numpy import save as _safetensors_bytes

CHECKSUM_KEY = "pyengine.checksum"
METADATA_KEY = "__metadata__"
_HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format's own bound on the header
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

_NOT_IN_NUMPY = {"BF16", "F8_E5M2", "F8_E4M3"}


class CorruptFile(ValueError):
    """A file that is not a valid (or not an intact) safetensors file."""


# ---------------------------------------------------------------- writing
def write(arrays: dict[str, np.ndarray], metadata: dict[str, str], path: str) -> None:
    """Write `arrays` with `metadata` and a checksum to `path`, crash-safely."""
    little_endian = {name: _little_endian(array) for name, array in arrays.items()}
    data = memoryview(_safetensors_bytes(little_endian, metadata=metadata or None))
    header_size, = struct.unpack("<Q", data[:8])
    header = json.loads(bytes(data[8:8 + header_size]))
    body = data[8 + header_size:]
    header.setdefault(METADATA_KEY, {})[CHECKSUM_KEY] = _checksum(header, body)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section stays 8-byte aligned
    _write_atomically([struct.pack("<Q", len(encoded)), encoded, body], path)


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
    if array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("<"))
    return array


def _write_atomically(chunks: list, path: str) -> None:
    """Write `chunks` to a temporary file next to `path`, fsync it, rename it over `path`, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
    try:
        with os.fdopen(handle, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable where the platform allows opening a folder."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------- reading
def read(path: str, caller: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of the safetensors file at `path`, verified.

    Raises FileNotFoundError for a missing file, ValueError (one line naming
    the path, prefixed with `caller`) for a damaged or foreign file and
    TypeError for a dtype numpy lacks (bfloat16).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{caller}: no such file: {path}")
    with open(path, "rb") as file:
        data = file.read()
    try:
        header, body = _parse(data)
        metadata = header.get(METADATA_KEY) or {}
        _verify_checksum(header, body, metadata)
        _check_numpy_has_the_dtypes(header, path, caller)
        arrays = _arrays_from_bytes(data)
    except (CorruptFile, SafetensorError) as error:
        raise CorruptFile(f"{caller}: {path} is not an intact safetensors file ({_one_line(error)})") from None
    _check_arrays_match_header(arrays, header, path, caller)
    return arrays, dict(metadata)


_NUMPY_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
                 "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
                 "I64": np.int64, "U64": np.uint64, "F64": np.float64}


def read_mapped(path: str, caller: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """As `read`, but the arrays are read-only views of the file mapped into memory (np.memmap), so a
    checkpoint of gigabytes costs no copy until its values are used. BF16 tensors (which numpy lacks) are
    widened to float32 here, which copies them; the 8-bit float formats raise TypeError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{caller}: no such file: {path}")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise CorruptFile(f"{size} bytes, shorter than the 8-byte header length")
            header_size, = struct.unpack("<Q", prefix)
            if header_size > _HEADER_LIMIT or 8 + header_size > size:
                raise CorruptFile(f"header of {header_size} bytes in a file of {size} bytes (truncated?)")
            header = _decode_header(file.read(header_size))
    except CorruptFile as error:
        raise CorruptFile(f"{caller}: {path} is not an intact safetensors file ({_one_line(error)})") from None
    return _mapped_arrays(path, header, 8 + header_size, size, caller)


def _mapped_arrays(path: str, header: dict, body_start: int, size: int, caller: str):
    entries = {k: v for k, v in header.items() if k != METADATA_KEY}
    try:
        _check_layout(entries, size - body_start)
    except CorruptFile as error:
        raise CorruptFile(f"{caller}: {path} is not an intact safetensors file ({_one_line(error)})") from None
    for name, entry in entries.items():
        if entry["dtype"] in ("F8_E5M2", "F8_E4M3"):
            raise TypeError(f"{caller}: {path} holds a tensor numpy cannot represent ('{name}' is {entry['dtype']})")
    metadata = header.get(METADATA_KEY) or {}
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    if CHECKSUM_KEY in metadata:
        try:
            _verify_checksum(header, memoryview(mapped[body_start:]), metadata)
        except CorruptFile as error:
            raise CorruptFile(f"{caller}: {path} is not an intact safetensors file ({_one_line(error)})") from None
    arrays = {}
    for name, entry in entries.items():
        begin, end = entry["data_offsets"]
        raw = mapped[body_start + begin:body_start + end].view(_NUMPY_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        arrays[name] = raw
    return arrays, dict(metadata)


def _parse(data: bytes) -> tuple[dict, memoryview]:
    """The header (a dict) and the data section; checks the layout of every tensor entry."""
    if len(data) < 8:
        raise CorruptFile(f"{len(data)} bytes, shorter than the 8-byte header length")
    header_size, = struct.unpack("<Q", data[:8])
    if header_size > _HEADER_LIMIT or 8 + header_size > len(data):
        raise CorruptFile(f"header of {header_size} bytes in a file of {len(data)} bytes (truncated?)")
    header = _decode_header(data[8:8 + header_size])
    body = memoryview(data)[8 + header_size:]
    _check_layout({k: v for k, v in header.items() if k != METADATA_KEY}, len(body))
    return header, body


def _decode_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFile(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise CorruptFile("header is not a JSON object")
    metadata = header.get(METADATA_KEY, {})
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise CorruptFile("__metadata__ is not a str -> str map")
    return header


def _check_layout(entries: dict, body_size: int) -> None:
    """Every entry has a known dtype, a shape of non-negative ints and offsets matching its size; together
    they cover the data section exactly."""
    spans = []
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CorruptFile(f"tensor '{name}' has a malformed entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ITEMSIZE:
            raise CorruptFile(f"tensor '{name}' has an unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_is_count(n) for n in shape)):
            raise CorruptFile(f"tensor '{name}' has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
            raise CorruptFile(f"tensor '{name}' has malformed offsets {offsets!r}")
        begin, end = offsets
        expected = _ITEMSIZE[dtype] * int(np.prod(shape, dtype=object))
        if end - begin != expected:
            raise CorruptFile(f"tensor '{name}' of dtype {dtype} and shape {tuple(shape)} needs {expected} "
                              f"bytes, its offsets give {end - begin}")
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise CorruptFile(f"tensor data is not contiguous at byte {covered}")
        covered = end
    if covered != body_size:
        raise CorruptFile(f"the tensors describe {covered} bytes of data, the file holds {body_size} (truncated?)")


def _check_numpy_has_the_dtypes(header: dict, path: str, caller: str) -> None:
    for name, entry in header.items():
        if name != METADATA_KEY and entry["dtype"] in _NOT_IN_NUMPY:
            raise TypeError(f"{caller}: {path} holds a tensor numpy cannot represent "
                            f"('{name}' is {entry['dtype']})")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _verify_checksum(header: dict, body: memoryview, metadata: dict) -> None:
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        return
    actual = _checksum(header, body)
    if stored != actual:
        raise CorruptFile(f"checksum mismatch: stored {stored[:23]}..., computed {actual[:23]}...")


def _checksum(header: dict, body) -> str:
    """SHA-256 over the header without the checksum (canonical JSON) and the data section."""
    metadata = {k: v for k, v in (header.get(METADATA_KEY) or {}).items() if k != CHECKSUM_KEY}
    described = {**{k: v for k, v in header.items() if k != METADATA_KEY}, METADATA_KEY: metadata}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    digest.update(body)
    return "sha256:" + digest.hexdigest()


def _check_arrays_match_header(arrays: dict, header: dict, path: str, caller: str) -> None:
    """What the safetensors package returned has exactly the header's names, shapes and dtypes."""
    entries = {k: v for k, v in header.items() if k != METADATA_KEY}
    if set(arrays) != set(entries):
        raise CorruptFile(f"{caller}: {path}: tensors read {sorted(arrays)} differ from the header's "
                          f"{sorted(entries)}")
    for name, array in arrays.items():
        if list(array.shape) != entries[name]["shape"] or array.dtype.itemsize != _ITEMSIZE[entries[name]["dtype"]]:
            raise CorruptFile(f"{caller}: {path}: tensor '{name}' read as {array.dtype}{list(array.shape)}, "
                              f"the header says {entries[name]['dtype']}{entries[name]['shape']}")


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
