"""Files: atomic writes (a kill never leaves half a file) and content hashes (inputs are named by content).

Every writer goes through a temporary file in the same folder, flushed and fsynced, then `os.replace`d over the
target: readers see the old file or the new one, never a mix. Temporary names carry the process id, so several
processes writing beside each other never share one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def partial_write(path: Path) -> bool:
    """Whether `path` is the temporary file of an atomic write that a kill interrupted (never a finished file)."""
    return path.name.startswith(".") and path.suffix[:4] == ".tmp" and path.suffix[4:].isdigit()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # partial_write() knows this name
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Append one JSON line per row and fsync, so that the lines survive a kill (a torn last line is the most
    a kill can leave; `score.PredictionLog` cuts it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder in a staging folder beside it, then put it in place (replacing an old one) on success.

    Example:
        >>> with atomic_folder("cache/model") as staging:  # doctest: +SKIP
        ...     model.save_pretrained(staging)
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], root: Path) -> str:
    """One sha256 for a set of files: of their names (relative to `root`) and sha256s, in sorted order."""
    listing = "".join(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n" for p in sorted(paths))
    return hashlib.sha256(listing.encode()).hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file; of a folder (a saved HF dataset), `sha256_files` over every file below it."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    return sha256_files([p for p in path.rglob("*") if p.is_file()], path)
