"""Reading, validating, downloading and caching the benchmark and instruction data.

The data directory holds the original repository's layout, `dataset/<folder>/test.json`. It is `--data-dir`,
else `$LLM_ADAPTERS_DATA`, else `$LLM_ADAPTERS_CACHE/data` (default `~/.cache/llm-adapters/data`).

Downloads come from the original repository's raw addresses (or a mirror given as `base_url`) and are verified
against the sha256 sums shipped in `checksums.json`, computed from the files at commit 8166572. HellaSwag's
test file was not available when the sums were computed: its sum is unknown, and it is downloaded only with
`allow_unverified=True` (`--allow-unverified`), after which it is still parsed and validated, and its sum
printed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from llm_adapters.data.tasks import TASKS, UPSTREAM, Task
from llm_adapters.errors import MissingInputError, UserError
from llm_adapters.files import sha256_file

ENV_DATA = "LLM_ADAPTERS_DATA"
CHECKSUMS = Path(__file__).with_name("checksums.json")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The benchmark data directory: `data_dir`, else `$LLM_ADAPTERS_DATA`, else the user cache folder.

    A folder without `dataset/` whose `llm-adapters/` subfolder has one (the shared `datasets/` folder) stands
    for that subfolder.
    """
    if data_dir:
        root = Path(data_dir).expanduser()
    elif os.environ.get(ENV_DATA):
        root = Path(os.environ[ENV_DATA]).expanduser()
    else:
        # Same root as models.cache_dir(), spelled out so that `data list` needs no torch import.
        root = Path(os.environ.get("LLM_ADAPTERS_CACHE") or Path.home() / ".cache" / "llm-adapters") / "data"
    if not (root / "dataset").is_dir() and (root / "llm-adapters" / "dataset").is_dir():
        return root / "llm-adapters"
    return root


def resolve_layout_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory (see `resolve_data_dir`), which must hold `dataset/<name>/test.json` (the LLM-Adapters
    layout): what the training-set builders and the overlap check read.

    Raises:
        MissingInputError: no `dataset/` folder there or in its `llm-adapters/` subfolder.
    """
    root = resolve_data_dir(data_dir)
    if not (root / "dataset").is_dir():
        raise MissingInputError(
            f"{root} has no dataset/ folder (expected dataset/<name>/test.json, LLM-Adapters layout); "
            f"pass --data-dir or set ${ENV_DATA}"
        )
    return root


# ---------------------------------------------------------------------------------------------- reading


def _parse_jsonl(path: Path, text: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                message = f"malformed JSON ({error.msg}, column {error.colno})"
                raise UserError(f"{path}: line {number}: {message}") from error
    return rows


def _parse_json_file(path: Path) -> list[Any]:
    """A JSON list, or JSON lines (by the `.jsonl` suffix, or a file of several objects one per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    if path.suffix == ".jsonl":
        return _parse_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("{") and error.msg == "Extra data":
            return _parse_jsonl(path, text)
        raise UserError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    return data


def _read_dataset_folder(path: Path) -> list[Any]:
    """Records of a folder written by `datasets.Dataset.save_to_disk` (a DatasetDict needs a single split)."""
    try:
        import datasets
    except ImportError as error:
        raise UserError(
            f"{path} is a folder; reading a saved Hugging Face dataset needs the `datasets` package "
            "(pip install datasets), or give a JSON/JSONL file"
        ) from error
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"{path}: not a saved Hugging Face dataset ({error})") from error
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise UserError(f"{path}: a dataset with splits {', '.join(loaded)}; give the folder of one split")
        loaded = next(iter(loaded.values()))
    return loaded.to_list()


def _check_field(path: Path, index: int, record: dict[str, Any], name: str) -> None:
    """Require a non-empty string (a number is accepted for `answer` and turned into its string)."""
    where = f"{path}, record {index}, field {name!r}"
    if name not in record:
        raise UserError(f"{where}: missing (the record has {', '.join(map(repr, record)) or 'no fields'})")
    value = record[name]
    if name == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        record[name] = value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: expected a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise UserError(f"{where}: empty")


def read_records(path: str | Path, required_fields: Iterable[str] = ("instruction", "answer")) -> list[dict[str, Any]]:
    """Read instruction records from a JSON list, a JSONL file or a saved Hugging Face dataset folder.

    Args:
        path: the file or folder.
        required_fields: fields every record must hold as a non-empty string (`answer` may be a number).
            `input` defaults to "" when absent, and must be a string when present.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: malformed JSON, or a bad record, naming the file, the record index (0-based) and the field.

    Example:
        >>> records = read_records("dataset/gsm8k/test.json")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"no such file: {path}")
    records = _read_dataset_folder(path) if path.is_dir() else _parse_json_file(path)
    return _check_records(path, records, required_fields)


def read_jsonl_text(
    path: str | Path, text: str, required_fields: Iterable[str] = ("instruction", "answer")
) -> list[dict[str, Any]]:
    """`read_records` for JSON lines already in memory (a member of a zip archive); `path` names them in errors.

    Raises:
        ValueError: a malformed line, or a bad record, as `read_records` says them.
    """
    path = Path(path)
    return _check_records(path, _parse_jsonl(path, text), required_fields)


def _check_records(path: Path, records: list[Any], required_fields: Iterable[str]) -> list[dict[str, Any]]:
    required = tuple(required_fields)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{path}, record {index}: expected an object, got {type(record).__name__}")
        for name in required:
            _check_field(path, index, record, name)
        record.setdefault("input", "")
        if not isinstance(record["input"], str):
            raise UserError(f"{path}, record {index}, field 'input': expected a string, got "
                            f"{type(record['input']).__name__}")
    return records


def validate_answers(task: Task, records: list[dict[str, Any]], path: str | Path) -> None:
    """Check every gold answer fits the task: a finite number, or one of the task's labels.

    Raises:
        ValueError: the first bad answer, naming file, record index and field.
    """
    for index, record in enumerate(records):
        answer = record["answer"]
        where = f"{path}, record {index}, field 'answer'"
        if task.answer_type == "number":
            try:
                ok = math.isfinite(float(answer))
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"{where}: {answer!r} is not a number (task {task.name} scores numbers)")
        elif answer not in task.labels:
            raise UserError(f"{where}: {answer!r} is not one of {', '.join(task.labels)} (task {task.name})")


@dataclass(frozen=True)
class TaskData:
    """A task's validated test records, where they came from and the file's sha256."""

    task: Task
    path: Path
    records: list[dict[str, Any]]
    sha256: str


def load_task_data(task: Task, data_dir: str | Path | None = None) -> TaskData:
    """Read and validate a task's test file from the data directory.

    Raises:
        FileNotFoundError: the file is missing (the message gives the download command).
        ValueError: malformed JSON or a bad record (file, record index, field).
    """
    path = resolve_data_dir(data_dir) / task.relpath
    if not path.is_file():
        raise MissingInputError(f"missing data for {task.name}: {path}; {download_hint([task], data_dir)}")
    records = read_records(path, required_fields=("instruction", "answer"))
    validate_answers(task, records, path)
    return TaskData(task, path, records, sha256_file(path))


def download_hint(tasks: list[Task], data_dir: str | Path | None) -> str:
    """The command that downloads `tasks` into `data_dir`."""
    where = f" --data-dir {data_dir}" if data_dir else ""
    unverified = any(known_checksums()[t.relpath]["sha256"] is None for t in tasks)
    flag = " --allow-unverified" if unverified else ""
    return f"download with: llm-adapters data download {' '.join(t.name for t in tasks)}{where}{flag}"


# ---------------------------------------------------------------------------------------------- download


def known_checksums() -> dict[str, dict[str, Any]]:
    """relpath -> {sha256, bytes, records} for every task file; sha256 None where no sum is known."""
    return json.loads(CHECKSUMS.read_text())["files"]


def download_file(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> str:
    """Fetch `url` into `dest` atomically (a `.part` file, then `os.replace`), checking its sha256.

    Returns:
        the downloaded file's sha256.

    Raises:
        ValueError: the download failed, or the sum differs (nothing is written then).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as handle:
            for block in iter(lambda: response.read(1 << 16), b""):
                digest.update(block)
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
    except (urllib.error.URLError, OSError) as error:
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {url}: {getattr(error, 'reason', error)}; "
                        "check the network, or give a mirror with --base-url") from error
    if sha256 is not None and digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: sha256 {digest.hexdigest()} differs from the expected {sha256}; "
                        "the file was not written (upstream changed, or a mirror serves another version)")
    os.replace(part, dest)
    return digest.hexdigest()


def download_tasks(
    tasks: list[Task],
    data_dir: str | Path | None = None,
    *,
    base_url: str = UPSTREAM,
    allow_unverified: bool = False,
    force: bool = False,
    skip_unverified: bool = False,
    timeout: float = 60.0,
) -> list[str]:
    """Download the tasks' test files into the data directory, verified against the shipped sums.

    Args:
        tasks: the tasks to fetch.
        data_dir: target directory (see `resolve_data_dir`).
        base_url: repository root the `dataset/<folder>/test.json` paths hang from (a mirror, or a test server).
        allow_unverified: fetch files with no known sum (hellaswag); they are still parsed and validated.
        force: replace a present file whose sum differs from the known one.
        skip_unverified: leave out (and name, with the command that fetches them) the tasks with no known sum,
            instead of refusing them all (what `data download` without task names does).
        timeout: seconds per connection.

    Returns:
        one line per task saying what was done.

    Raises:
        ValueError: an unknown sum without `allow_unverified`, a modified file without `force`, a failed
            download or a sum mismatch (checked before any download for the first two).
    """
    root = resolve_data_dir(data_dir)
    sums = known_checksums()
    unverifiable = [t for t in tasks if sums[t.relpath]["sha256"] is None and not allow_unverified
                    and not (root / t.relpath).is_file()]
    if skip_unverified:
        tasks = [t for t in tasks if t not in unverifiable]
    for task in tasks:
        if sums[task.relpath]["sha256"] is None and not allow_unverified:
            raise UserError(f"no known sha256 for {task.name} (it was not available when the shipped sums were "
                            "computed); pass --allow-unverified to download it unverified")
    lines = []
    for task in tasks:
        expected, dest = sums[task.relpath]["sha256"], root / task.relpath
        if dest.is_file() and expected is None and not force:
            lines.append(f"{task.name}: present, no known sum to verify it against ({dest})")
            continue
        if dest.is_file() and expected is not None:
            actual = sha256_file(dest)
            if actual == expected:
                lines.append(f"{task.name}: present, verified ({dest})")
                continue
            if not force:
                raise UserError(f"{dest} exists but its sha256 {actual} differs from {expected}; "
                                "pass --force to replace it")
        got = download_file(f"{base_url.rstrip('/')}/{task.relpath}", dest, expected, timeout)
        if expected is None:
            try:
                validate_answers(task, read_records(dest), dest)
            except ValueError:
                dest.unlink()
                raise
        note = "verified" if expected else f"UNVERIFIED, sha256 {got}"
        lines.append(f"{task.name}: downloaded, {note} ({dest})")
    if skip_unverified:
        lines += [f"{t.name}: not downloaded, no known sha256 to verify it; fetch it with: llm-adapters data "
                  f"download {t.name} --allow-unverified" for t in unverifiable]
    return lines


def list_tasks(data_dir: str | Path | None = None) -> str:
    """A table of every task: group, answer type, records, size, and whether its file is present and verified."""
    root = resolve_data_dir(data_dir)
    sums = known_checksums()
    rows = [f"data directory: {root}", f"{'task':<11} {'group':<12} {'answer':<7} {'records':>7} {'size':>9}  status"]
    for task in TASKS.values():
        known, path = sums[task.relpath], root / task.relpath
        if not path.is_file():
            status = "missing"
        elif known["sha256"] is None:
            status = "present (no known sum)"
        else:
            status = "present, verified" if sha256_file(path) == known["sha256"] else "present, MODIFIED"
        size = f"{known['bytes'] / 1e3:.0f} kB" if known["bytes"] else "?"
        records = known["records"] if known["records"] else "?"
        rows.append(f"{task.name:<11} {task.group:<12} {task.answer_type:<7} {records:>7} {size:>9}  {status}")
    return "\n".join(rows)
