"""Training-set builders: the shared parts (data folders, records, overlap exclusion, provenance, writing).

Every builder (`build_commonsense`, `build_math`, `build_synthetic_arithmetic`, each in its own module) returns
a `BuildResult` of LLM-Adapters records {instruction, input: "", output, answer} and, given `out`, writes
`<out>.json` and a provenance sidecar `<out>.provenance.json`: builder, arguments, seed, source files with
sha256 and counts, what was dropped and why, the test-set overlaps excluded, and the provenance block
(versions, git commit, machine, date).

Training questions that also occur in a test set of the same group are excluded by default (see `overlap`).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from llm_adapters.data.io import ENV_DATA
from llm_adapters.data.overlap import MODES, Mode, match_tasks
from llm_adapters.data.tasks import GROUPS, resolve_tasks
from llm_adapters.errors import OutputExistsError, UserError
from llm_adapters.files import sha256_file, write_json_atomic
from llm_adapters.provenance import provenance as provenance_block

Record = dict[str, str]


def resolve_extra_dir(extra_dir: str | Path | None, data_dir: Path) -> Path:
    """The folder of raw training splits (`extra/`): given, or the data directory's sibling `extra/`."""
    return Path(extra_dir).expanduser() if extra_dir is not None else Path(data_dir).parent / "extra"


def make_record(instruction: str, output: str, answer: str) -> Record:
    """One LLM-Adapters training record (`input` is always empty, as in every original file)."""
    return {"instruction": instruction, "input": "", "output": output, "answer": answer}


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
    data_dir: str | None = field(default=None, metadata={
        "help": f"LLM-Adapters data folder (dataset/...) or its parent; unset: ${ENV_DATA}, else the cache"
    })
    extra_dir: str | None = field(default=None, metadata={"help": "raw training splits (default: <data>/../extra)"})

    def check(self, problems: list[str], limit: int | None, accepted: str) -> None:
        """Raise one ValueError listing `problems` plus the shared checks (all errors at once)."""
        if limit is not None and limit < 1:
            problems.append(f"the per-source maximum must be at least 1, got {limit}")
        if self.overlap_mode not in MODES:
            problems.append(f"overlap_mode {self.overlap_mode!r}; accepted: {', '.join(MODES)}")
        if problems:
            raise UserError("; ".join(problems) + f" ({accepted})")


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
    provenance = {
        "builder": builder,
        "arguments": asdict(options),
        "seed": getattr(options, "seed", None),
        "records": len(records),
        "sources": [asdict(s) for s in sources],
        **(extra or {}),
        "provenance": provenance_block(),
    }
    result = BuildResult(records, provenance)
    if out is None:
        return result
    data_path, sidecar = output_paths(out)
    existing = [str(p) for p in (data_path, sidecar) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"output exists: {', '.join(existing)}; pass --overwrite to replace it")
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
