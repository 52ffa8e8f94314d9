"""Data directory, record reading and validation, download from a local HTTP server, the task listing."""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from llm_adapters.data.io import (
    download_tasks,
    known_checksums,
    list_tasks,
    load_task_data,
    read_records,
    resolve_data_dir,
    sha256_file,
    validate_answers,
)
from llm_adapters.data.tasks import TASKS
from shared_data import LLM_ADAPTERS_DATA

SHARED = LLM_ADAPTERS_DATA
pytestmark = pytest.mark.shared_data
PRESENT = [name for name, task in TASKS.items() if (SHARED / task.relpath).is_file()]


def test_resolve_data_dir_prefers_flag_then_env_then_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLM_ADAPTERS_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("LLM_ADAPTERS_DATA")
    monkeypatch.setenv("LLM_ADAPTERS_CACHE", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "data"
    assert resolve_data_dir(SHARED.parent) == SHARED  # the shared datasets/ folder stands for its llm-adapters/


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_records_accepts_json_list_jsonl_and_numeric_answers(tmp_path: Path) -> None:
    rows = [{"instruction": "2+2?", "answer": 4}, {"instruction": "3+3?", "input": "", "answer": "6"}]
    as_list = read_records(_write(tmp_path / "a.json", json.dumps(rows)))
    as_lines = read_records(_write(tmp_path / "b.jsonl", "\n".join(map(json.dumps, rows)) + "\n"))
    lines_named_json = read_records(_write(tmp_path / "c.json", "\n".join(map(json.dumps, rows))))
    expected = [{"instruction": "2+2?", "answer": "4", "input": ""},
                {"instruction": "3+3?", "input": "", "answer": "6"}]
    assert as_list == as_lines == lines_named_json == expected


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": "a", "answer": "1"},\n {"instruction": "b" "answer": "2"}]',
     r"bad\.json: malformed JSON at line 2"),
    ('{"instruction": "a", "answer": "1"}', r"expected a JSON list of records, got a JSON dict"),
    ('[{"instruction": "a", "answer": "1"}, ["b", "2"]]', r"bad\.json, record 1: expected an object, got list"),
    ('[{"instruction": "a", "answer": "1"}, {"instruction": "b"}]', r"bad\.json, record 1, field 'answer': missing"),
    ('[{"instruction": null, "answer": "1"}]', r"record 0, field 'instruction': expected a string, got NoneType"),
    ('[{"instruction": "  ", "answer": "1"}]', r"record 0, field 'instruction': empty"),
])
def test_read_records_bad_input_names_file_record_and_field(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_records(_write(tmp_path / "bad.json", content))


def test_read_records_bad_jsonl_line_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: malformed JSON"):
        read_records(_write(tmp_path / "bad.jsonl", '{"instruction": "a", "answer": "1"}\n{"instruction": \n'))


def test_read_records_training_fields_are_configurable(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.json", json.dumps([{"instruction": "a", "output": "b", "answer": "c"}]))
    assert read_records(path, ("instruction", "output"))[0]["output"] == "b"
    with pytest.raises(ValueError, match="field 'output': missing"):
        read_records(_write(tmp_path / "t2.json", json.dumps([{"instruction": "a", "answer": "c"}])), ("output",))


def test_read_records_dataset_folder_without_datasets_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if it were absent
    with pytest.raises(ValueError, match=r"needs the `datasets` package \(pip install datasets\)"):
        read_records(tmp_path)


def test_read_records_reads_a_saved_dataset_folder(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([{"instruction": "a", "answer": "1"}]).save_to_disk(str(tmp_path / "ds"))
    assert read_records(tmp_path / "ds")[0]["instruction"] == "a"


@pytest.mark.parametrize("task, answer, message", [
    ("boolq", "maybe", r"record 1, field 'answer': 'maybe' is not one of true, false \(task boolq\)"),
    ("aqua", "F", r"'F' is not one of A, B, C, D, E"),
    ("gsm8k", "twelve", r"'twelve' is not a number"),
    ("gsm8k", "nan", r"'nan' is not a number"),
])
def test_validate_answers_outside_the_label_set_raises(task: str, answer: str, message: str) -> None:
    records = [{"instruction": "q", "answer": TASKS[task].labels[0] if TASKS[task].labels else "1"},
               {"instruction": "q", "answer": answer}]
    with pytest.raises(ValueError, match=message):
        validate_answers(TASKS[task], records, "x.json")


@pytest.mark.parametrize("name", PRESENT)
def test_load_task_data_shared_files_match_shipped_checksums(name: str) -> None:
    data = load_task_data(TASKS[name], SHARED)
    known = known_checksums()[TASKS[name].relpath]
    assert (data.sha256, len(data.records)) == (known["sha256"], known["records"])


def test_load_task_data_missing_file_names_path_and_download_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing data for piqa: .*piqa/test\.json; download with: "
                                                r"llm-adapters data download piqa --data-dir"):
        load_task_data(TASKS["piqa"], tmp_path)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving a repository-shaped folder; yields (base URL, folder)."""
    root = tmp_path / "upstream"
    for name in ("gsm8k", "boolq"):
        target = root / TASKS[name].relpath
        target.parent.mkdir(parents=True)
        shutil.copy(SHARED / TASKS[name].relpath, target)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_download_tasks_fetches_and_verifies_then_skips_present(served: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = served
    tasks = [TASKS["gsm8k"], TASKS["boolq"]]
    lines = download_tasks(tasks, tmp_path / "data", base_url=base_url)
    assert all("downloaded, verified" in line for line in lines)
    for task in tasks:
        assert sha256_file(tmp_path / "data" / task.relpath) == known_checksums()[task.relpath]["sha256"]
    again = download_tasks(tasks, tmp_path / "data", base_url=base_url)
    assert all("present, verified" in line for line in again)
    assert not list((tmp_path / "data").rglob("*.part"))


def test_download_tasks_sum_mismatch_writes_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = served
    served_file = root / TASKS["boolq"].relpath
    served_file.write_text(served_file.read_text().replace('"true"', '"false"', 1))
    with pytest.raises(ValueError, match=r"sha256 .* differs from the expected .*; the file was not written"):
        download_tasks([TASKS["boolq"]], tmp_path / "data", base_url=base_url)
    assert not any((tmp_path / "data").rglob("*.json*"))


def test_download_tasks_unknown_sum_needs_allow_unverified(served: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = served
    with pytest.raises(ValueError, match="no known sha256 for hellaswag.*--allow-unverified"):
        download_tasks([TASKS["hellaswag"]], tmp_path / "data", base_url=base_url)
    target = root / TASKS["hellaswag"].relpath
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps([{"instruction": "Pick an ending", "input": "", "output": "", "answer": "ending2"}]))
    (line,) = download_tasks([TASKS["hellaswag"]], tmp_path / "data", base_url=base_url, allow_unverified=True)
    assert f"UNVERIFIED, sha256 {sha256_file(target)}" in line


def test_data_download_without_task_names_fetches_what_it_can_verify_and_names_hellaswag(
        served: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_adapters.cli import main

    base_url, root = served
    for name in TASKS:  # serve every other task too (the fixture serves two)
        target = root / TASKS[name].relpath
        if name != "hellaswag" and not target.exists():
            target.parent.mkdir(parents=True)
            shutil.copy(SHARED / TASKS[name].relpath, target)
    assert main(["data", "download", "--data-dir", str(tmp_path / "data"), "--base-url", base_url]) == 0
    out = capsys.readouterr().out
    assert out.count("downloaded, verified") == len(TASKS) - 1
    assert ("hellaswag: not downloaded, no known sha256 to verify it; fetch it with: llm-adapters data download "
            "hellaswag --allow-unverified") in out
    assert not (tmp_path / "data" / TASKS["hellaswag"].relpath).exists()


def test_download_tasks_unreachable_file_says_so(served: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = served
    with pytest.raises(ValueError, match=r"cannot download .*/dataset/piqa/test\.json: .*--base-url"):
        download_tasks([TASKS["piqa"]], tmp_path / "data", base_url=base_url)


def test_download_tasks_modified_file_needs_force(served: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = served
    target = tmp_path / "data" / TASKS["gsm8k"].relpath
    target.parent.mkdir(parents=True)
    target.write_text("[]")
    with pytest.raises(ValueError, match="differs from .*pass --force"):
        download_tasks([TASKS["gsm8k"]], tmp_path / "data", base_url=base_url)
    download_tasks([TASKS["gsm8k"]], tmp_path / "data", base_url=base_url, force=True)
    assert sha256_file(target) == known_checksums()[TASKS["gsm8k"].relpath]["sha256"]


def test_list_tasks_shows_every_task_with_its_status(tmp_path: Path) -> None:
    target = tmp_path / TASKS["gsm8k"].relpath
    target.parent.mkdir(parents=True)
    shutil.copy(SHARED / TASKS["gsm8k"].relpath, target)
    table = list_tasks(tmp_path).splitlines()
    status = {line.split()[0]: line for line in table[2:]}
    assert set(status) == set(TASKS)
    assert status["gsm8k"].endswith("present, verified") and " 1319 " in status["gsm8k"]
    assert status["boolq"].endswith("missing")
