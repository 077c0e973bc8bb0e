"""Arrays kept on disk between runs: the built-in datasets and their split rows, so that a
later run reads them back instead of importing scikit-learn to compute them again.

Where: ``$TUNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuner``, else ``~/.cache/tuner``;
the arrays live under its ``data/`` folder, which can be deleted at any time (it is
rebuilt on first use).

An entry is one ``.npz`` file without pickles: its arrays, the key it was computed from
(a JSON string) and a SHA-256 checksum of both. It is written to a temporary file in the
same folder and renamed into place (``os.replace``), so that a reader, another worker
included, sees a whole file or none. A file that cannot be read, fails its checksum, holds
other arrays than expected or answers another key is reported in one line on stderr and
read as missing: the caller computes the arrays and writes the entry again. A folder that
cannot be written leaves the arrays uncached, silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]
KEY = "__key__"
CHECKSUM = "__sha256__"


def cache_dir() -> Path:
    """The tuner's cache folder (see the module's docstring); not created here."""
    given = os.environ.get("TUNER_CACHE_DIR")
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec ignores a relative path.
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "tuner"


def data_dir() -> Path:
    """Where the arrays' entries are: ``cache_dir() / "data"``."""
    return cache_dir() / "data"


def checksum(key_text: str, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the key's text and of every array's name, dtype, shape and bytes, in name
    order."""
    digest = hashlib.sha256(key_text.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        digest.update(a.data)
    return digest.hexdigest()


def read_entry(relpath: str, key: Mapping[str, object], names: tuple[str, ...],
               check: Callable[[Arrays], str | None] | None = None) -> Arrays | None:
    """The arrays ``names`` of the entry at ``relpath`` under :func:`data_dir`, or None when
    there is none or it is damaged (then a line on stderr says so). ``check`` returns why
    arrays whose checksum holds are still unusable, or None."""
    path = data_dir() / relpath
    try:
        arrays = _load(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        return None  # not written yet, or not ours to read: computed, as without a cache
    except _NotAnArchive as exc:
        _warn(path, str(exc))
        return None
    except Exception as exc:  # whatever a damaged file makes numpy or zipfile raise
        _warn(path, f"cannot be read ({type(exc).__name__}: {exc})")
        return None
    problem = _problem(arrays, key, names)
    if problem is None and check is not None:
        problem = check({n: arrays[n] for n in names})
    if problem is not None:
        _warn(path, problem)
        return None
    return {n: arrays[n] for n in names}


def write_entry(relpath: str, key: Mapping[str, object], arrays: Mapping[str, np.ndarray]) -> None:
    """Write an entry atomically; a folder that cannot be written leaves it unwritten."""
    if any(a.dtype.hasobject for a in arrays.values()):
        return  # not representable without pickles: left uncached
    path = data_dir() / relpath
    text = _key_text(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, allow_pickle=False, **arrays, **{
                KEY: np.array(text), CHECKSUM: np.array(checksum(text, arrays))})
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)


class _NotAnArchive(Exception):
    pass


def _key_text(key: Mapping[str, object]) -> str:
    return json.dumps(dict(key), sort_keys=True)


def _load(path: Path) -> Arrays:
    with path.open("rb") as file:
        # Anything but a zip archive is refused before numpy guesses at it (a pickle, say).
        if file.read(4) != b"PK\x03\x04":
            raise _NotAnArchive("is not an .npz archive")
        file.seek(0)
        with np.load(file, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}  # each member's CRC-32 checked


def _problem(arrays: Arrays, key: Mapping[str, object], names: tuple[str, ...]) -> str | None:
    """Why a readable file is not the entry asked for, or None."""
    meta = (KEY, CHECKSUM)
    if any(m not in arrays or arrays[m].dtype.kind != "U" or arrays[m].shape != ()
           for m in meta):
        return "has no key or checksum"
    data = {n: a for n, a in arrays.items() if n not in meta}
    stored = str(arrays[KEY])
    if str(arrays[CHECKSUM]) != checksum(stored, data):
        return "fails its checksum"
    if stored != _key_text(key):
        return f"was written for another key ({stored}, not {_key_text(key)})"
    if sorted(data) != sorted(names):
        return f"holds {sorted(data)}, not {sorted(names)}"
    return None


def _warn(path: Path, problem: str) -> None:
    # One line whatever the exception's message holds.
    print(" ".join(f"Warning: the data cache file {path} {problem}; recomputing it".split()),
          file=sys.stderr)
