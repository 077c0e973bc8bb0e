"""Reading a data file that may come from anyone, without trusting it.

>>> arrays = read_npz(Path("data.npz"))      # doctest: +SKIP
>>> frame = read_table(Path("data.csv"))     # doctest: +SKIP

Whatever the file holds, the outcome is its content or one
:class:`~tuner.errors.DataError` that names the file and the problem: a file misnamed
(a CSV called ``.npz``), damaged or truncated, not UTF-8, holding Python objects
(which only pickle could load, and pickle runs code), or declaring arrays larger than
the file holds or the machine has free. Nothing is read from what is not a regular
file (a FIFO waits forever for a writer, ``/dev/zero`` never ends), and no array is
allocated before its size has been checked.
"""

from __future__ import annotations

import codecs
import lzma
import math
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from numpy.lib import format as npy

from tuner.errors import DataError
from tuner.machine import available_memory

if TYPE_CHECKING:
    import pandas as pd

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip
_NPY_MAGIC = b"\x93NUMPY"
_PARQUET_MAGIC = b"PAR1"
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\f") + b"\x7f"
_NPZ = "an .npz archive (a zip of .npy arrays, as numpy.savez writes)"

# What reading a damaged archive raises: zipfile's and numpy's own errors, those of the
# decompressors (zlib, bz2 raises OSError, lzma), a member cut short (EOFError) or one
# that needs a password (RuntimeError) or a compression zipfile lacks.
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
            ValueError, OSError, RuntimeError, NotImplementedError)


def check_file(path: Path) -> None:
    """Refuse a path that is missing or is not a regular file (a directory, a FIFO, a
    device), before anything opens it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError("no such file", str(path)) from None
    except OSError as exc:
        raise DataError(f"cannot read it: {exc.strerror}", str(path)) from None
    if not stat.S_ISREG(mode):
        raise DataError(f"is {_kind(mode)}, not a regular file; give a .csv, .npz or .parquet "
                        "file", str(path))


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _head(path: Path) -> bytes:
    """The first bytes of a file that :func:`check_file` accepts."""
    check_file(path)
    try:
        with path.open("rb") as file:
            return file.read(4096)
    except OSError as exc:
        raise DataError(f"cannot read it: {exc.strerror}", str(path)) from None


def _looks_like_text(head: bytes) -> bool:
    """No control bytes but tabs and line ends: text, in UTF-8 or another 8-bit encoding."""
    return len(head.translate(None, _CONTROL)) == len(head)


def _what_it_is(path: Path, head: bytes) -> str:
    """What a file's first bytes say it is, with what to do if it was misnamed."""
    if head.startswith(_ZIP_MAGIC):
        return f"it is a zip archive: if numpy.savez wrote it, rename it {_renamed(path, '.npz')}"
    if head.startswith(_NPY_MAGIC):
        return ("it is a single .npy array (numpy.save): save the features and targets "
                "together with numpy.savez(file, x=..., y=...)")
    if head.startswith(_PARQUET_MAGIC):
        return f"it is a Parquet file: rename it {_renamed(path, '.parquet')}"
    if _looks_like_text(head):
        return f"it looks like text: if it is a CSV, rename it {_renamed(path, '.csv')}"
    return "it holds binary data"


def _renamed(path: Path, suffix: str) -> str:
    return path.with_suffix(suffix).name


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive, by name. Every member's header is read first and
    checked: numbers only (never pickle), no more bytes declared than the member holds,
    and in all no more than the memory available."""
    head = _head(path)
    if not head:
        raise DataError(f"the file is empty; expected {_NPZ}", str(path))
    if not head.startswith(_ZIP_MAGIC):
        raise DataError(f"not {_NPZ}; {_what_it_is(path, head)}", str(path))
    member = None
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            declared = 0
            for info in members:
                member = info.filename
                declared += _declared_bytes(archive, info, str(path))
            _check_memory(declared, str(path))
            arrays = {}
            for info in members:
                member = info.filename
                with archive.open(info) as stream:
                    arrays[info.filename[:-len(".npy")]] = npy.read_array(stream,
                                                                          allow_pickle=False)
    except MemoryError:
        raise DataError(f"not enough memory to load member {member!r}", str(path)) from None
    except _DAMAGED as exc:
        where = f" (member {member!r})" if member else ""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"the .npz archive is damaged or truncated{where}: {reason}",
                        str(path)) from None
    return arrays


def _declared_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> int:
    """The bytes a member's .npy header declares, once they are known to be numbers that
    the member holds."""
    if not info.filename.endswith(".npy"):
        raise DataError(f"member {info.filename!r} is not a .npy array; an .npz holds only "
                        "arrays (numpy.savez)", source)
    name = info.filename[:-len(".npy")]
    with archive.open(info) as stream:
        shape, dtype = _header(stream, name, source)
        held = info.file_size - stream.tell()
    if dtype.hasobject:
        raise DataError(f"array {name!r} holds Python objects (dtype {dtype}), which are never "
                        "loaded: that would need pickle, which can run code; save numbers",
                        source)
    if any(n < 0 for n in shape):
        raise DataError(f"array {name!r} declares the shape {shape}, with a negative length",
                        source)
    declared = math.prod(shape) * dtype.itemsize
    if declared > held:
        raise DataError(f"array {name!r} declares the shape {shape} of {dtype}, {declared} "
                        f"bytes, but its member holds {held} bytes: the archive is truncated "
                        "or its header is wrong", source)
    return declared


def _header(stream: IO[bytes], name: str, source: str) -> tuple[tuple[int, ...], np.dtype]:
    version = npy.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(stream)
    else:
        raise DataError(f"array {name!r} is in .npy format {version[0]}.{version[1]}, which is "
                        "not read; save it with numpy.savez of numpy 1.x or 2.x", source)
    return shape, dtype


def _check_memory(declared: int, source: str) -> None:
    available = available_memory()
    if available is not None and declared > available:
        raise DataError(f"its arrays declare {declared} bytes, more than the {available} bytes "
                        "of memory available", source)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (UTF-8 text) or Parquet file as a frame; the suffix says which."""
    import pandas as pd

    head = _head(path)
    if not head:
        raise DataError("the file is empty", str(path))
    csv = path.suffix.lower() == ".csv"
    if csv and not _looks_like_text(head):
        raise DataError(f"not a CSV file (UTF-8 text); {_what_it_is(path, head)}", str(path))
    if not csv and not head.startswith(_PARQUET_MAGIC):
        raise DataError(f"not a Parquet file; {_what_it_is(path, head)}", str(path))
    try:
        return pd.read_csv(path) if csv else pd.read_parquet(path)
    except UnicodeDecodeError:
        raise DataError(f"not UTF-8 text: {_undecodable(path)}; save it as UTF-8",
                        str(path)) from None
    except Exception as exc:  # pandas and pyarrow raise many kinds; each becomes one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read it as {'CSV' if csv else 'Parquet'}: {reason}",
                        str(path)) from None


def _undecodable(path: Path) -> str:
    """Where a file first stops being UTF-8 (pandas says where in its buffer only)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as file:
        while True:
            chunk = file.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's pending bytes (no line end) and this chunk
                line += exc.object[:exc.start].count(b"\n")
                return f"line {line} has the byte 0x{exc.object[exc.start]:02x}"
            if not chunk:
                return "a byte cannot be decoded"
            line += chunk.count(b"\n")
