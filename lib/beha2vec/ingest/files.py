"""Finding input files and cutting them into read tasks, on the driver.

Inputs are files, globs or folders, plain or gzip (detected by magic bytes, not by name). Plain
line-oriented files larger than ``split_bytes`` are cut into byte ranges so several tasks read
one big file; a range starts at the first line that begins inside it.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from dataclasses import dataclass

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
HIDDEN = (".", "_")
# what reading a truncated or corrupted gzip file raises, at the point the damage is reached
DAMAGED_GZIP = (EOFError, gzip.BadGzipFile, zlib.error)


class InputError(ValueError):
    """The inputs cannot be read at all (nothing found, unreadable, missing columns)."""


def damaged_gzip(exc: Exception) -> str:
    """Reject reason for the point where a gzip file breaks off: what came before it is kept."""
    return f"damaged gzip file ({exc}): the rest of the file cannot be read"


def damaged_header(path: str, exc: Exception) -> InputError:
    """A gzip file damaged before its header ends: nothing of it can be read."""
    return InputError(f"{path}: damaged gzip file, its header cannot be read ({exc})")


@dataclass(frozen=True)
class Split:
    """One read task: a file, or a byte range of a plain file."""

    path: str
    start: int
    end: int
    gzip: bool
    first_line: int | None


def resolve_paths(patterns: list[str], folder_match: tuple[str, ...] = ()) -> list[str]:
    """Expand files, globs and folders in a stable order.

    Inside folders (walked recursively) hidden files are skipped, and so are files whose name
    neither ends with one of ``folder_match`` (before any ``.gz``) nor starts with one of them;
    files named explicitly are always taken.
    """
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise InputError(f"no input matches '{pattern}'")
        for match in matches:
            if os.path.isdir(match):
                found.extend(_walk(match, folder_match))
            else:
                found.append(os.path.abspath(match))
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError(f"no input files found in {', '.join(patterns)}")
    for path in unique:
        if not os.access(path, os.R_OK):
            raise InputError(f"input file is not readable: {path}")
    return unique


def _wanted(name: str, folder_match: tuple[str, ...]) -> bool:
    base = name.lower().removesuffix(".gz")
    return not folder_match or base.endswith(folder_match) or base.startswith(folder_match)


def _walk(folder: str, folder_match: tuple[str, ...]) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(HIDDEN))
        for name in sorted(files):
            if name.startswith(HIDDEN) or not _wanted(name, folder_match):
                continue
            out.append(os.path.abspath(os.path.join(root, name)))
    return out


def is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def is_parquet(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def is_blank(path: str) -> bool:
    """True for a file with no content but whitespace (after decompression).

    A damaged gzip file is not blank: the readers keep what precedes the damage and reject the rest.
    """
    try:
        with open_binary(path, is_gzip(path)) as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                if chunk.strip(b" \t\r\n" + UTF8_BOM):
                    return False
    except DAMAGED_GZIP:
        return False
    return True


def open_binary(path: str, compressed: bool):
    """A binary stream of the file's content, decompressed where needed."""
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def plan_splits(paths: list[str], split_bytes: int, splittable: bool) -> list[Split]:
    """Byte-range tasks for big plain files where the format allows it, else one per file."""
    splits = []
    for path in paths:
        compressed = is_gzip(path)
        size = os.path.getsize(path)
        if compressed or not splittable or size <= split_bytes:
            splits.append(Split(path, 0, -1, compressed, 1))
            continue
        for start in range(0, size, split_bytes):
            end = min(start + split_bytes, size)
            splits.append(Split(path, start, end, False, 1 if start == 0 else None))
    return splits


def read_header(path: str) -> tuple[str, int]:
    """First line of a (possibly gzip) file without BOM, and the byte length it occupied."""
    try:
        with open_binary(path, is_gzip(path)) as f:
            raw = f.readline(1_000_000)
    except DAMAGED_GZIP as exc:
        raise damaged_header(path, exc) from exc
    text = raw[len(UTF8_BOM):] if raw.startswith(UTF8_BOM) else raw
    return text.decode("utf-8", errors="replace").rstrip("\r\n"), len(raw)

