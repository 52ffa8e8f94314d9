"""The study store: the run folders are the truth, the study folder keeps their index.

    DIR/study.json               the spec as given and its fixed part (what every run id depends on)
    DIR/index.jsonl              append-only events: started / done / failed, one JSON line each (fsynced)
    DIR/data/                    training data built from a `{builder: ...}` spec
    DIR/runs/<name>-<id>/        one ordinary fine-tuning run folder (adapter/) and evaluation folder (eval/),
                                 then result.json (written last, atomically: the run is done) or failed.json

A kill at any instant leaves the store consistent: a run without result.json or failed.json is unfinished and is
redone (its fine-tuning and evaluation resume where they stopped), result.json is one file per run, so a run x
task record can never be counted twice, and a torn last index line is dropped. Shards of one study written on
several machines merge by copying their `runs/` folders into one DIR.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from llm_adapters.errors import UserError
from llm_adapters.files import append_jsonl, write_json_atomic
from llm_adapters.rundir import differences
from llm_adapters.study.spec import Run, StudySpec

STUDY_FILE, INDEX_FILE, RESULT, FAILED, RUNNING = "study.json", "index.jsonl", "result.json", "failed.json", \
    "running.json"


def runs_dir(out: str | Path) -> Path:
    return Path(out) / "runs"


def run_folder(out: str | Path, run: Run) -> Path:
    return runs_dir(out) / run.folder_name


def open_store(out: str | Path, study: StudySpec) -> None:
    """Create the study folder, or check that it holds this study with the same fixed part (a grown grid is
    fine).

    Raises:
        UserError: the folder holds another study, or this one with a changed key that enters the run ids.
    """
    out = Path(out)
    path = out / STUDY_FILE
    fixed = json.loads(json.dumps(study.fixed(), default=str))
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        registered = saved.get("spec", {}).get("hypotheses") or []
        now = json.loads(json.dumps(list(study.hypotheses), default=list))
        if registered != now and result_paths(out):
            raise UserError(f"{out} holds results of study {study.name!r} registered with other hypotheses; a "
                            "pre-registered hypothesis cannot change once results exist (the report would call the "
                            "new ones confirmatory): restore them, or run the changed study into another --out")
        changed = differences(saved.get("fixed"), fixed)
        if saved.get("name") != study.name:
            changed.insert(0, f"name: {saved.get('name')!r} -> {study.name!r}")
        if changed:
            raise UserError(f"{out} holds study {saved.get('name')!r} with other settings, whose results cannot be "
                            f"mixed with these ({'; '.join(changed)}); use another --out, or undo the change "
                            "(growing the grid is allowed)")
    write_json_atomic(path, {"name": study.name, "source": study.source, "fixed": fixed,
                             "spec": _spec_as_data(study)})


def _spec_as_data(study: StudySpec) -> dict[str, Any]:
    return json.loads(json.dumps({"name": study.name, "description": study.description,
                                  "base_model": study.base_model, "data": study.data,
                                  "finetune": study.finetune, "evaluate": study.evaluate, "adapter": study.adapter,
                                  "grid": [dict(p) for p in study.grid], "overrides": study.overrides,
                                  "exclude": list(study.exclude), "in_distribution": list(study.in_distribution),
                                  "resources": study.resources, "baseline": study.baseline,
                                  "power": study.power, "hypotheses": list(study.hypotheses)}, default=list))


def saved_study(out: str | Path) -> StudySpec:
    """The study spec a study folder was run with (for `status`, which is given the folder only).

    Raises:
        MissingInputError: not a study folder.
    """
    from llm_adapters.errors import MissingInputError
    from llm_adapters.study.spec import build_study

    path = Path(out) / STUDY_FILE
    if not path.is_file():
        raise MissingInputError(f"{out} is not a study folder (no {STUDY_FILE}); run `llm-adapters study run` first")
    saved = json.loads(path.read_text(encoding="utf-8"))
    return build_study(saved["spec"], source=saved.get("source") or "")


def record_event(out: str | Path, event: str, run: Run, **extra: Any) -> None:
    """Append one event line to the index (fsynced)."""
    append_jsonl(Path(out) / INDEX_FILE, [{
        "event": event, "id": run.id, "name": run.name,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(), "pid": os.getpid(), **extra}])


def read_index(out: str | Path) -> list[dict[str, Any]]:
    """The index events (a torn last line, from a kill, is skipped)."""
    path = Path(out) / INDEX_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


# A running run holds a lease in its folder (`running.json`): who holds it and when it last renewed it. The holder
# renews it every RENEW seconds (an atomic rewrite, `Lease`); any driver, on any host of a shared file system,
# leaves a run whose lease is fresh alone and takes over one whose lease is older than STALE seconds (its holder
# was killed, or its machine lost). A holder writes the run's outcome only while it still holds the lease
# (`Lease.held`). Environment variables set both, for tests and for slow shared file systems.
RENEW = float(os.environ.get("LLM_ADAPTERS_LEASE_RENEW", "30"))
STALE = float(os.environ.get("LLM_ADAPTERS_LEASE_STALE", "600"))


def status(folder: Path) -> str:
    """done, failed, running (its lease is fresh: renewed less than STALE seconds ago, on any host; on this host
    its holder must also be alive), interrupted (a stale lease, or none) or pending."""
    if (folder / RESULT).exists():
        return "done"
    if (folder / FAILED).exists():
        return "failed"
    holder = _read_lease(folder / RUNNING)
    if holder is not None:
        return "running" if _fresh(holder) else "interrupted"
    return "pending" if not folder.exists() else "interrupted"


def _read_lease(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:  # torn (an earlier version wrote it in place): stale
        return {}


def _fresh(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
        return False  # its process is gone: no need to wait for the lease to go stale
    return time.time() - float(holder.get("renewed", 0)) < STALE


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Lease:
    """This process's hold on a run: `claim` it, and while held a thread renews it every RENEW seconds; `held` says
    whether it still is (check it before writing the run's outcome); `release` removes it (after result.json or
    failed.json is written).

    A renewal that fails with an I/O error (ESTALE or EIO on a shared file system) is reported in one line on
    stderr and tried again at the next tick: the lease goes stale only if renewals keep failing for STALE seconds.
    """

    def __init__(self, folder: Path) -> None:
        self.path, self.owner = folder / RUNNING, uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed = 0.0  # when this process last wrote the lease (time.time(), as other hosts compare it)
        self._lost = False  # the renewal thread found another holder's lease

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "owner": self.owner, "renewed": time.time(),
                "renew_seconds": RENEW, "stale_seconds": STALE}

    def claim(self) -> bool:
        """Take the run unless another holder's lease is fresh; True if this process now holds it. Two drivers
        claiming at once: one wins (the lease is created exclusively; a stale one is moved away first, and only
        one driver can move a given file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _read_lease(self.path)
                if holder is None:
                    continue  # released meanwhile: try again
                if _fresh(holder):
                    return False
                stale = self.path.with_name(f".{RUNNING}.stale-{self.owner}")
                try:
                    os.rename(self.path, stale)
                except FileNotFoundError:
                    continue
                moved = _read_lease(stale)
                if moved is not None and moved != holder and _fresh(moved):
                    os.rename(stale, self.path)  # another driver's fresh lease, written after our read: put back
                    return False
                stale.unlink(missing_ok=True)
                continue
            record = self._record()
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self._renewed = record["renewed"]
            self._thread = threading.Thread(target=self._renew, name=f"lease-{self.path.parent.name}",
                                            daemon=True)
            self._thread.start()
            return True
        return False

    def _renew(self) -> None:
        while not self._stop.wait(RENEW):
            try:
                holder = _read_lease(self.path)
                if holder is None or holder.get("owner") != self.owner:
                    self._lost = True
                    return  # taken over (this process stalled past STALE): stop renewing another's lease
                record = self._record()
                write_json_atomic(self.path, record)
                self._renewed = record["renewed"]
            except OSError as error:  # a transient error of the file system: the next tick tries again
                print(f"[study] could not renew the lease {self.path} ({type(error).__name__}: {error}); trying "
                      f"again in {RENEW:g} s (it goes stale {STALE:g} s after the last renewal)", file=sys.stderr,
                      flush=True)

    def held(self) -> bool:
        """Whether this process still holds the run: its last renewal is younger than STALE (no other driver may
        have taken it over) and the lease on disk is still its own. A lease that cannot be read (three tries)
        counts as lost."""
        if self._thread is None or self._lost or time.time() - self._renewed >= STALE:
            return False
        for _ in range(3):
            try:
                holder = _read_lease(self.path)
            except OSError:
                time.sleep(min(1.0, RENEW))
                continue
            return holder is not None and holder.get("owner") == self.owner
        return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            holder = _read_lease(self.path)
            if holder is not None and holder.get("owner") == self.owner:
                self.path.unlink(missing_ok=True)
        except OSError as error:  # left in place: it goes stale, and the run's outcome is on disk already
            print(f"[study] could not remove the lease {self.path} ({type(error).__name__}: {error})",
                  file=sys.stderr, flush=True)


def result_paths(out: str | Path) -> list[Path]:
    """Every finished run's result.json in the study folder, one per run (sorted by folder)."""
    return sorted(runs_dir(out).glob(f"*/{RESULT}"))


def results(out: str | Path) -> list[dict[str, Any]]:
    """Every finished run's result, one per run (sorted by folder)."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in result_paths(out)]


def failures(out: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(runs_dir(out).glob(f"*/{FAILED}"))]
