"""The run-folder life cycle, shared by fine-tuning runs, evaluation folders and their task folders.

A run folder holds `run.json`: its kind (`finetune`, `evaluation`, `task`), the run's identity (every setting that
decides its results, and its inputs by content: data sha256, base model and adapter identities; never a path
that could move), the settings that may change between a run and its resumption, and `outputs`: the names (glob
patterns) of what this kind of run writes in the folder. A finished run also holds its finished marker
(`manifest.json` for fine-tuning). The states:

- absent, empty, or holding only what a kill left of our own atomic writes: fresh;
- `run.json` of the same kind with the same identity: resume (or, with the marker, done: nothing to redo);
- `run.json` with another identity: refused, naming each changed key, unless `overwrite` (then replaced);
- anything else is refused, with or without `overwrite`: entries that are not ours (a user's notes, an adapter
  saved by another tool, another program's files: a few are named), a run of another kind (an evaluation never
  replaces a fine-tuning run, whose folder is an adapter), a folder of an earlier version without `run.json`.

Replacing removes only our entries (`run.json`, what `outputs` names, our interrupted atomic writes), never the
folder itself; a listed folder that holds a `run.json` of its own (an evaluation's task folder) is removed the
same way, entry by entry. `plan` decides without writing anything, so every check passes before a folder is
touched; `begin` applies the plan.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
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


# Identity keys added after folders were first written (the fine-tune's device and, in 16-bit, its split): a
# folder without them resumes as before instead of being refused for a key it could not have recorded.
ADDED_KEYS = ("device", "micro_batch_size", "processes")


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


def foreign_entries(folder: str | Path, outputs: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The entries of `folder` that this project did not write there: everything but `run.json`, the names its
    `outputs` match, the names the caller's `outputs` match (a folder among those only with a `run.json` of its
    own: a user's `piqa/` beside our evaluation is not our task folder), and interrupted atomic writes; inside a
    matched folder that has a `run.json` of its own, its foreign entries as `sub/entry`. Sorted."""
    folder = Path(folder)
    recorded = tuple((read_run(folder) or {}).get("outputs", ()))
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name == RUN_FILE or partial_write(entry):
            continue
        ours = entry.is_dir() and (entry / RUN_FILE).is_file()
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in recorded) or (
                (ours or not entry.is_dir()) and any(fnmatch.fnmatchcase(entry.name, p) for p in outputs)):
            if ours:
                found += [f"{entry.name}/{name}" for name in foreign_entries(entry)]
        else:
            found.append(entry.name)
    return found


def plan(folder: str | Path, identity: dict[str, Any], *, kind: str, outputs: tuple[str, ...] = (),
         finished: str | None = None, overwrite: bool | Literal["different"] = False,
         may_change: dict[str, Any] | None = None, what: str = "output_dir", flag: str | None = None) -> Plan:
    """Decide, without writing anything, how a run with `identity` uses `folder`.

    Args:
        folder: the run folder.
        identity: what must match for the folder's content to belong to this run.
        kind: what kind of run (`finetune`, `evaluation`, `task`): a folder of another kind is never taken over.
        outputs: glob patterns of the entries this kind of run writes (recorded in `run.json` by `begin`).
        finished: the file whose presence marks a finished run (None: the run is never finished, it grows).
        overwrite: True: replace our content whatever its identity; "different": replace it only when it holds
            another identity, and resume it when it holds this run. Foreign entries are never replaced.
        may_change: settings recorded beside the identity that may change on resumption.
        what: how the folder is named in messages (`output_dir`, `--output-dir`, `task folder`).
        flag: the setting that chooses another folder, named in messages (default: `what`).

    Raises:
        OutputExistsError: the folder holds entries that are not ours, a run of another kind, or content of an
            earlier version without a `run.json`.
        RunMismatchError: the folder holds a run with another identity (each changed key named).
    """
    folder = Path(folder)
    # a folder holding only what a kill left of our own atomic writes (its first run.json, say) is empty
    if not folder.exists() or (folder.is_dir() and all(partial_write(p) for p in folder.iterdir())):
        return Plan("fresh")
    if not folder.is_dir():
        raise OutputExistsError(f"{what} {folder} is a file")
    flag = flag or what
    saved = read_run(folder)
    if saved is None or "identity" not in saved:
        names = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        holds = "content of an earlier version (no identity recorded)" if saved or (
            finished and (folder / finished).exists()) else f"files that are not ours ({names})"
        raise OutputExistsError(f"{what} {folder} is not empty and holds {holds}; nothing there is deleted, even "
                                f"with --overwrite: choose another {flag} or empty it yourself")
    if saved.get("kind", kind) != kind:
        held, wanted = (_KINDS.get(k, k) for k in (saved["kind"], kind))
        raise OutputExistsError(f"{what} {folder} holds {_article(held)} {held}, not {_article(wanted)} {wanted}; it "
                                f"is never replaced, even with --overwrite: choose another {flag}")
    # keys this version added to the identity, absent from a folder an earlier version wrote, are not compared
    recorded = saved["identity"]
    changed = differences(recorded, {k: v for k, v in identity.items() if k in recorded or k not in ADDED_KEYS})
    if changed and not overwrite:
        state = "a finished run" if finished and (folder / finished).exists() else "results of another run"
        raise RunMismatchError(f"{what} {folder} holds {state} with other settings or inputs "
                               f"({'; '.join(changed)}); choose another {flag}, or pass --overwrite to start again")
    if overwrite is True or changed:  # replace: only if every entry is ours
        foreign = foreign_entries(folder, outputs)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputExistsError(f"{what} {folder} holds entries that are not ours ({shown}); nothing there is "
                                    f"deleted, even with --overwrite: move them away or choose another {flag}")
        return Plan("replace")
    notes = tuple(differences(saved.get("may_change", {}), may_change or {}))
    done = finished is not None and (folder / finished).exists()
    return Plan("done" if done else "resume", notes)


_KINDS = {"finetune": "fine-tuning run (an adapter)", "evaluation": "evaluation folder", "task": "task folder"}


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def begin(folder: str | Path, plan: Plan, identity: dict[str, Any], may_change: dict[str, Any] | None = None,
          record: dict[str, Any] | None = None, *, kind: str, outputs: tuple[str, ...] = ()) -> None:
    """Apply `plan`: clear a replaced folder of our entries, then write `run.json` (kind, identity, may-change
    settings, `outputs`: what this run writes here, `record`: information that is not identity, such as the
    paths the inputs were read from)."""
    folder = Path(folder)
    if plan.action == "replace":
        remove_ours(folder, outputs)
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_run(folder) if plan.action in ("resume", "done") else None
    started = (previous or {}).get("started") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    listed = sorted(set((previous or {}).get("outputs", ())) | set(outputs))
    write_json_atomic(folder / RUN_FILE, {"kind": kind, "identity": identity, "may_change": may_change or {},
                                          "outputs": listed, "record": record or {}, "started": started})


def add_outputs(folder: str | Path, names: list[str] | tuple[str, ...]) -> None:
    """Record more entries as written by this run (before they are written, so a kill never leaves one of ours
    unrecorded)."""
    folder = Path(folder)
    saved = read_run(folder)
    if saved is None:
        raise RuntimeError(f"{folder} has no {RUN_FILE}: begin() first")
    listed = set(saved.get("outputs", ()))
    if not set(names) <= listed:
        write_json_atomic(folder / RUN_FILE, {**saved, "outputs": sorted(listed | set(names))})


def remove_ours(folder: str | Path, outputs: tuple[str, ...] = ()) -> None:
    """Delete what this project wrote in `folder` (see `foreign_entries`), for --overwrite; the folder and
    anything else stay. Refuses folders whose loss would be a disaster rather than a rerun."""
    folder = Path(folder)
    resolved, cwd, home = folder.resolve(), Path.cwd().resolve(), Path.home().resolve()
    if resolved in (cwd, home) or resolved in cwd.parents or (resolved / ".git").exists():
        raise UserError(f"refusing to clear {resolved} for --overwrite (the working directory, one of its "
                        "parents, the home folder or a git repository); choose a dedicated output folder")
    foreign = set(foreign_entries(folder, outputs))
    saved = read_run(folder) or {}
    patterns = tuple(saved.get("outputs", ())) + tuple(outputs)
    for entry in sorted(folder.iterdir()):
        if entry.name in foreign or entry.name == RUN_FILE:
            continue
        if entry.is_dir() and (entry / RUN_FILE).is_file():
            remove_ours(entry)
            if not any(entry.iterdir()):
                entry.rmdir()
        elif entry.is_dir():
            shutil.rmtree(entry)
        elif partial_write(entry) or any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            entry.unlink()
    (folder / RUN_FILE).unlink(missing_ok=True)


def check_apart(output: str | Path, inputs: dict[str, str | Path | None], flag: str = "--output-dir") -> None:
    """Refuse an output folder equal to, inside or holding an input folder (the base model's, the adapter's):
    writing or clearing results there could touch the input.

    Raises:
        UserError: naming the flag, the folder and the input it would touch.
    """
    out = Path(output).expanduser().resolve()
    for name, path in inputs.items():
        if path is None or not Path(path).expanduser().is_dir():
            continue
        where = Path(path).expanduser().resolve()
        relation = ("is" if out == where else "is inside" if where in out.parents else
                    "holds" if out in where.parents else None)
        if relation:
            raise UserError(f"{flag} {output} {relation} the {name} folder {path}; results go in a folder of their "
                            f"own: choose another {flag}")
