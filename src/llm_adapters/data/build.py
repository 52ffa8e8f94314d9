"""Training-set builders: the shared parts (data folders, records, overlap exclusion, provenance, writing).

Every builder (`build_commonsense`, `build_math`, `build_synthetic_arithmetic`, each in its own module) returns
a `BuildResult` of LLM-Adapters records {instruction, input: "", output, answer} and, given `out`, writes
`<out>.json` and a provenance sidecar `<out>.provenance.json`: builder, arguments, seed, source files with
sha256 and counts, what was dropped and why, the test-set overlaps excluded, package version, date.

Training questions that also occur in a test set of the same group are excluded by default (see `overlap`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from llm_adapters.data.overlap import MODES, Mode, match_tasks
from llm_adapters.data.tasks import GROUPS, resolve_tasks

ENV_DATA = "LLM_ADAPTERS_SHARED_DATA"
FIELDS = ("instruction", "input", "output", "answer")
Record = dict[str, str]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder that holds `dataset/<name>/test.json` (the LLM-Adapters layout).

    `data_dir` (or $LLM_ADAPTERS_SHARED_DATA) may be that folder or its parent (the shared `datasets/`
    folder, whose `llm-adapters/` subfolder is used).

    Raises:
        FileNotFoundError: neither given, or no `dataset/` folder found there.
    """
    raw = data_dir if data_dir is not None else os.environ.get(ENV_DATA)
    if not raw:
        raise FileNotFoundError(f"no data directory: pass --data-dir or set ${ENV_DATA}")
    root = Path(raw).expanduser()
    for candidate in (root, root / "llm-adapters"):
        if (candidate / "dataset").is_dir():
            return candidate
    raise FileNotFoundError(f"{root} has no dataset/ folder (expected dataset/<name>/test.json, LLM-Adapters layout)")


def resolve_extra_dir(extra_dir: str | Path | None, data_dir: Path) -> Path:
    """The folder of raw training splits (`extra/`): given, or the data directory's sibling `extra/`."""
    return Path(extra_dir).expanduser() if extra_dir is not None else Path(data_dir).parent / "extra"


def read_records(path: Path, required_fields: Iterable[str] = FIELDS) -> list[dict[str, Any]]:
    """Read instruction data (a JSON list or JSONL of objects); a bad record is named by file, index and field.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable JSON, a record that is not an object, or a required field missing or not a string.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else read_jsonl(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i}: expected an object, got {type(record).__name__}")
        for name in required_fields:
            if not isinstance(record.get(name), str):
                problem = "missing" if name not in record else f"not a string ({type(record[name]).__name__})"
                raise ValueError(f"{path}: record {i}: field {name!r} {problem}")
    return records


def read_jsonl(path: Path, text: str | None = None) -> list[Any]:
    """Parse JSON lines (from `text`, or the file); an unparsable line is named by file and line number."""
    lines = (text if text is not None else Path(path).read_text(encoding="utf-8")).splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number}: not valid JSON: {error}") from error
    return rows


def make_record(instruction: str, output: str, answer: str) -> Record:
    """One LLM-Adapters training record (`input` is always empty, as in every original file)."""
    return {"instruction": instruction, "input": "", "output": output, "answer": answer}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SourceStats:
    """What one source contributed: read, dropped (by reason), overlaps excluded (by task), kept."""

    name: str
    files: dict[str, str]  # path -> sha256
    read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    test_overlaps: dict[str, int] = field(default_factory=dict)  # found per task; excluded unless kept
    overlapping: int = 0  # items found in any test set of the group
    capped: int = 0  # left out by the per-source maximum
    kept: int = 0
    note: str = ""

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def source_stats(name: str, files: Iterable[Path], note: str = "") -> SourceStats:
    """Start the statistics of a source, hashing its files."""
    return SourceStats(name, {str(p): sha256_file(p) for p in files}, note=note)


@dataclass
class BuildResult:
    """A builder's records and the provenance written beside them."""

    records: list[Record]
    provenance: dict[str, Any]
    paths: tuple[Path, Path] | None = None  # (data, sidecar) once written


@dataclass
class MixOptions:
    """Options shared by the builders that mix downloaded sources (commonsense, math)."""

    seed: int = field(default=42, metadata={"help": "seed of the shuffles and of the per-source sampling"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle each source and then the mixture"})
    keep_overlap: bool = field(default=False, metadata={"help": "keep items whose question is in a test set"})
    overlap_mode: Mode = field(default="alnum", metadata={"help": "question normalisation: ws or alnum"})
    data_dir: str | None = field(default=None, metadata={"help": "LLM-Adapters data folder (dataset/...)"})
    extra_dir: str | None = field(default=None, metadata={"help": "raw training splits (default: <data>/../extra)"})

    def check(self, problems: list[str], limit: int | None, accepted: str) -> None:
        """Raise one ValueError listing `problems` plus the shared checks (all errors at once)."""
        if limit is not None and limit < 1:
            problems.append(f"the per-source maximum must be at least 1, got {limit}")
        if self.overlap_mode not in MODES:
            problems.append(f"overlap_mode {self.overlap_mode!r}; accepted: {', '.join(MODES)}")
        if problems:
            raise ValueError("; ".join(problems) + f" ({accepted})")


def exclude_overlaps(
    records: list[Record], stats: SourceStats, group: str, data_dir: Path, mode: Mode, keep: bool
) -> tuple[list[Record], list[str]]:
    """Drop records whose question occurs in a test set of `group`; count them per task in `stats`.

    With `keep`, overlaps are only counted. Returns the kept records and the group's tasks that have no test
    file here (and so could not be checked).
    """
    tasks = resolve_tasks(GROUPS[group])
    _, hits, missing = match_tasks([r["instruction"] for r in records], tasks, data_dir, mode)
    stats.overlapping = len(hits)
    for names in hits.values():
        for name in names:
            stats.test_overlaps[name] = stats.test_overlaps.get(name, 0) + 1
    if keep:
        return records, missing
    return [r for i, r in enumerate(records) if i not in hits], missing


def take(records: list[Record], stats: SourceStats, limit: int | None, rng: random.Random, shuffle: bool) -> list:
    """Shuffle (if asked) and cap one source's records, recording how many were kept."""
    records = list(records)
    if shuffle:
        rng.shuffle(records)
    if limit is not None and len(records) > limit:
        stats.capped = len(records) - limit
        records = records[:limit]
    stats.kept = len(records)
    return records


def mix(
    builder: str,
    options: MixOptions,
    group: str,
    data_dir: Path,
    loaders: list[Callable[[], tuple[list[Record], SourceStats]]],
    limit: int | None,
    out: str | Path | None,
    overwrite: bool,
) -> BuildResult:
    """Load each source, exclude test overlaps, shuffle and cap it, then shuffle the mixture and finish."""
    rng = random.Random(options.seed)
    records: list[Record] = []
    sources: list[SourceStats] = []
    unchecked: set[str] = set()
    for load in loaders:
        loaded, stats = load()
        loaded, missing = exclude_overlaps(loaded, stats, group, data_dir, options.overlap_mode, options.keep_overlap)
        unchecked.update(missing)
        records += take(loaded, stats, limit, rng, options.shuffle)
        sources.append(stats)
    if options.shuffle:
        rng.shuffle(records)
    overlap = {"mode": options.overlap_mode, "excluded": not options.keep_overlap, "not_checked": sorted(unchecked)}
    return finish(builder, options, records, sources, out, overwrite, {"overlap": overlap})


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """`out` or `out.json` -> (`out.json`, `out.provenance.json`)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".provenance.json")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and `os.replace`, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
    os.replace(tmp, path)


def finish(
    builder: str,
    options: Any,
    records: list[Record],
    sources: list[SourceStats],
    out: str | Path | None,
    overwrite: bool,
    extra: dict[str, Any] | None = None,
) -> BuildResult:
    """Assemble the provenance and, if `out` is given, write data and sidecar.

    Raises:
        FileExistsError: an output exists and `overwrite` is false.
    """
    from llm_adapters import __version__

    provenance = {
        "builder": builder,
        "arguments": asdict(options),
        "seed": getattr(options, "seed", None),
        "records": len(records),
        "sources": [asdict(s) for s in sources],
        **(extra or {}),
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result = BuildResult(records, provenance)
    if out is None:
        return result
    data_path, sidecar = output_paths(out)
    existing = [str(p) for p in (data_path, sidecar) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"output exists: {', '.join(existing)}; pass --overwrite to replace it")
    write_json_atomic(data_path, records)
    provenance["output"] = {"path": str(data_path), "sha256": sha256_file(data_path)}
    write_json_atomic(sidecar, provenance)
    result.paths = (data_path, sidecar)
    return result


def log_summary(result: BuildResult) -> str:
    """One line per source: kept / read, dropped, overlaps excluded (what the CLI prints)."""
    lines = []
    for s in result.provenance["sources"]:
        parts = [f"{s['name']}: kept {s['kept']} of {s['read']}"]
        if s["dropped"]:
            parts.append("dropped " + ", ".join(f"{n} {why}" for why, n in s["dropped"].items()))
        if s["test_overlaps"]:
            found = ", ".join(f"{t} {n}" for t, n in s["test_overlaps"].items())
            parts.append(f"{s['overlapping']} in test sets ({found})")
        if s["capped"]:
            parts.append(f"{s['capped']} over the maximum")
        if s["note"]:
            parts.append(s["note"])
        lines.append("; ".join(parts))
    where = f" -> {result.paths[0]}" if result.paths else ""
    lines.append(f"{result.provenance['builder']}: {len(result.records)} records{where}")
    return "\n".join(lines)
