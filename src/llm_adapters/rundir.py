"""The run-folder life cycle, shared by fine-tuning runs and evaluation folders.

A run folder holds `run.json`: the run's identity (every setting that decides its results, and its inputs by
content: data sha256, base model and adapter identities; never a path that could move) and, for the record, the
settings that may change between a run and its resumption. A finished run also holds its finished marker
(`manifest.json` for fine-tuning). The states:

- absent or empty: fresh;
- `run.json` with the same identity: resume (or, with the marker, done: nothing to redo);
- `run.json` with another identity: refused, naming each changed key, unless `overwrite` (then replaced);
- anything else (foreign files, or a finished folder of an earlier version without identity): refused unless
  `overwrite`.

`plan` decides without writing anything, so every check can pass before a folder is touched; `begin` applies
the plan. Deleting for `overwrite` refuses folders whose loss would be a disaster (the working directory, home,
a git repository).
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llm_adapters.errors import OutputExistsError, RunMismatchError, UserError
from llm_adapters.files import partial_write, write_json_atomic

RUN_FILE = "run.json"
Action = Literal["fresh", "resume", "done", "replace"]


@dataclass(frozen=True)
class Plan:
    """What to do with a run folder: start fresh, resume it, nothing (done), or replace its content."""

    action: Action
    changed: tuple[str, ...] = ()  # settings that may change and did: "key: old -> new" (the new value wins)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key: old -> new' for each leaf that differs between two JSON-like values (nested keys joined by '.')."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += differences(old.get(key), new.get(key), name)
        return found
    return [] if old == new else [f"{prefix or 'identity'}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_run(folder: str | Path) -> dict[str, Any] | None:
    """The folder's `run.json`, or None."""
    path = Path(folder) / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise UserError(f"{path} is damaged ({error}); remove the folder or pass --overwrite") from error


def plan(folder: str | Path, identity: dict[str, Any], *, finished: str | None = None,
         overwrite: bool | Literal["different"] = False, may_change: dict[str, Any] | None = None,
         what: str = "output_dir", flag: str | None = None) -> Plan:
    """Decide, without writing anything, how a run with `identity` uses `folder`.

    Args:
        folder: the run folder.
        identity: what must match for the folder's content to belong to this run.
        finished: the file whose presence marks a finished run (None: the run is never finished, it grows).
        overwrite: True: replace whatever the folder holds; "different": replace it only when it does not hold
            this run (another identity, foreign files), and resume it when it does.
        may_change: settings recorded beside the identity that may change on resumption.
        what: how the folder is named in messages (`output_dir`, `--output-dir`, `task folder`).
        flag: the setting that chooses another folder, named in messages (default: `what`).

    Raises:
        OutputExistsError: the folder holds foreign files, or a finished run without an identity.
        RunMismatchError: the folder holds a run with another identity (each changed key named).
    """
    folder = Path(folder)
    # a folder holding only what a kill left of our own atomic writes (its first run.json, say) is empty
    if not folder.exists() or (folder.is_dir() and all(partial_write(p) for p in folder.iterdir())):
        return Plan("fresh")
    if not folder.is_dir():
        raise OutputExistsError(f"{what} {folder} is a file")
    if overwrite is True:
        return Plan("replace")
    if overwrite == "different":
        try:
            return plan(folder, identity, finished=finished, may_change=may_change, what=what, flag=flag)
        except UserError:  # OutputExistsError is one too
            return Plan("replace")
    flag = flag or what
    saved = read_run(folder)
    if saved is None or "identity" not in saved:
        names = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        kind = "a run of an earlier version (no identity recorded)" if saved or (
            finished and (folder / finished).exists()) else f"no run of ours ({names})"
        raise OutputExistsError(f"{what} {folder} is not empty and holds {kind}; choose another {flag} or pass "
                                "--overwrite to replace its content")
    changed = differences(saved["identity"], identity)
    if changed:
        state = "a finished run" if finished and (folder / finished).exists() else "results of another run"
        raise RunMismatchError(f"{what} {folder} holds {state} with other settings or inputs "
                               f"({'; '.join(changed)}); choose another {flag}, or pass --overwrite to start again")
    notes = tuple(differences(saved.get("may_change", {}), may_change or {}))
    done = finished is not None and (folder / finished).exists()
    return Plan("done" if done else "resume", notes)


def begin(folder: str | Path, plan: Plan, identity: dict[str, Any], may_change: dict[str, Any] | None = None,
          record: dict[str, Any] | None = None) -> None:
    """Apply `plan`: clear a replaced folder, then write `run.json` (identity, may-change settings, `record`:
    information that is not identity, such as the paths the inputs were read from)."""
    folder = Path(folder)
    if plan.action == "replace":
        remove_run_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_run(folder) if plan.action in ("resume", "done") else None
    started = (previous or {}).get("started") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(folder / RUN_FILE, {"identity": identity, "may_change": may_change or {},
                                          "record": record or {}, "started": started})


def remove_run_dir(folder: str | Path) -> None:
    """Delete `folder` for --overwrite, refusing folders whose loss would be a disaster rather than a rerun."""
    resolved, cwd, home = Path(folder).resolve(), Path.cwd().resolve(), Path.home().resolve()
    if resolved in (cwd, home) or resolved in cwd.parents or (resolved / ".git").exists():
        raise UserError(f"refusing to delete {resolved} for --overwrite (the working directory, one of its "
                        "parents, the home folder or a git repository); choose a dedicated output folder")
    shutil.rmtree(resolved)
