"""The web app (`llm-adapters ui`) in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright
against the app on 127.0.0.1. Each tab renders, Compare answers a question with a tiny model and an adapter,
Study shows a hand-made study's table and disagreements, Runs lists a fine-tune run; no request leaves the
machine. Without Chromium or Playwright the browser test skips with one printed reason; the file readers are
tested without a browser."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from llm_adapters.ui import runs as run_files
from llm_adapters.ui import studies

CHROMIUM = "/usr/bin/chromium"
SRC = Path(__file__).resolve().parents[1] / "src"
QUESTIONS = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}", "answer": str(a + b)}
             for a, b in [(1, 2), (13, 4), (7, 25)]]
TABLE = [["configuration", "column", "mean", "sd", "ci95_low", "ci95_high", "n_seeds", "n_questions", "percent"],
         ["method=lora,placement=attn", "sums", "0.6666666666666666", "0.0", "0.2077", "0.9385", "1", "3", "1.88"],
         ["method=series,placement=mlp", "sums", "0.3333333333333333", "0.0", "0.0615", "0.7923", "1", "3", "0.94"]]
COMPARISONS = [["a", "b", "scope", "difference", "se", "z", "p", "p_holm", "verdict", "n_questions", "a_better",
                "b_better"],
               ["method=lora,placement=attn", "method=series,placement=mlp", "methods", "0.3333", "0.27", "1.22", "0.5", "0.5", "inside the noise", "3",
                "1", "0"]]


def _write_run(study: Path, name: str, values: dict[str, Any], correct: list[bool], answers: list[str],
               method: str | None = None) -> None:
    """A finished study run as the runner leaves it: result.json with per-question outcomes, and the evaluation's
    predictions."""
    folder = study / "runs" / f"{name}-0123456789"
    (folder / "eval" / "sums").mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "id": "0123456789", "name": name, "study": "hand-made", "values": values,
        "method": method or values["method"], "seed": values.get("seed"), "baseline": method == "base", "tasks": {"sums": {"accuracy": sum(correct) / 3, "n": 3, "correct": sum(correct),
                                                   "group": "math", "outcomes": correct}}}))
    (folder / "eval" / "sums" / "predictions.jsonl").write_text("".join(json.dumps({
        "index": i, "prompt": f"### Instruction:\n{q['instruction']}\n\n### Response:\n", "generation": f"The answer is "
        f"{a}.", "prediction": float(a), "gold": q["answer"], "correct": c}) + "\n"
        for i, (q, a, c) in enumerate(zip(QUESTIONS, answers, correct))))


def make_study(root: Path) -> Path:
    """A hand-made study folder: report/table.csv, comparisons.csv and a plot; two runs that disagree on one
    question."""
    study = root / "study"
    (study / "report").mkdir(parents=True)
    for name, rows in (("table.csv", TABLE), ("comparisons.csv", COMPARISONS)):
        with (study / "report" / name).open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(3, 2))
    axis.bar(["method=lora,placement=attn", "method=series,placement=mlp"], [66.7, 33.3])
    figure.savefig(study / "report" / "accuracy.png")
    plt.close(figure)
    _write_run(study, "lora-attn-s1", {"method": "lora", "placement": "attn", "seed": 1}, [True, True, False],
               ["3", "17", "31"])
    _write_run(study, "series-mlp-s1", {"method": "series", "placement": "mlp", "seed": 1}, [True, False, False],
               ["3", "18", "30"])
    _write_run(study, "base", {}, [False, False, True], ["4", "18", "32"], method="base")  # the baseline run
    return study


def make_run(root: Path) -> Path:
    """A finished fine-tune run on tiny-llama (2 steps)."""
    from llm_adapters.train import finetune, load_config

    (root / "train.json").write_text(json.dumps(QUESTIONS))
    return finetune(load_config(data=str(root / "train.json"), output_dir=str(root / "runs" / "tiny-lora"),
                                base_model="tiny-llama", adapter={"method": "lora", "r": 4, "dropout": 0.0},
                                template="alpaca", batch_size=2, micro_batch_size=2, warmup_steps=0, max_steps=2,
                                learning_rate=1e-2, progress=False))


def test_study_files_read_the_table_plots_and_the_questions_two_configurations_disagree_on(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    header, rows = studies.table(study)
    assert header == TABLE[0] and rows[0][:3] == ["method=lora,placement=attn", "sums", "0.6667"]
    assert studies.comparisons(study)[1][0][8] == "inside the noise"
    assert [p.name for p in studies.plots(study)] == ["accuracy.png"]
    assert sorted(studies.configurations(study)) == ["base model", "method=lora,placement=attn", "method=series,placement=mlp"]
    differing = studies.disagreements(study, "method=lora,placement=attn", "method=series,placement=mlp", "sums")
    assert [(d["index"], d["a_correct"], d["b_correct"], d["a_answer"], d["b_answer"]) for d in differing] == [
        (1, True, False, 17.0, 18.0)]
    assert differing[0]["question"] == "What is 13 plus 4?"
    # The base model, run once without a seed, is compared with each seed of the other configuration.
    assert [(d["index"], d["seed"], d["a_correct"]) for d in studies.disagreements(study, "base model", "method=lora,placement=attn", "sums")
            ] == [(0, 1, False), (1, 1, False), (2, 1, True)]
    assert studies.table(tmp_path / "nothing") == ([], [])


def test_runs_are_found_with_their_summary_settings_and_loss_curve(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert run_files.find_runs([tmp_path]) == [run]
    row = run_files.summary(run)
    assert row[:4] == [str(run), "lora", "tiny-llama", 2]
    assert run_files.settings(run)["config"]["template"] == "alpaca"
    assert run_files.loss_curve(run) == run / "loss_curve.png"


def test_ui_app_has_gradio_analytics_off_and_loads_no_model_until_asked() -> None:
    pytest.importorskip("gradio", reason="the extra ui is not installed")
    from llm_adapters.ui.app import build_app
    from llm_adapters.ui.config import UiConfig

    app = build_app(UiConfig(base_model="tiny-llama"))
    assert app.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert app.pool.labels == ["base"] and app.pool.loaded == []


# ------------------------------------------------------------------------------------------------ in a browser

def _browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)"
    try:
        import gradio  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`llm-adapters ui` in its own process, on a free port, with a tiny base model, a fine-tuned adapter, a
    hand-made study and the run's folder."""
    reason = _browser_missing()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("ui")
    run, study, port = make_run(root), make_study(root), _free_port()
    log = (root / "ui.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "llm_adapters", "ui", "--base-model", "tiny-llama",
                                "--adapter", str(run), "--study", str(study), "--runs", str(root / "runs"),
                                "--port", str(port), "--device", "cpu"],
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"the app stopped: {(root / 'ui.log').read_text()}")
                time.sleep(0.5)
        else:
            pytest.fail(f"the app did not listen within 2 minutes: {(root / 'ui.log').read_text()}")
        yield {"url": f"http://127.0.0.1:{port}/", "process": process, "run": run, "study": study, "port": port}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def page(app: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(app["url"], wait_until="load")  # not "networkidle": the app's event stream stays open
        page.get_by_role("tab", name="Compare").wait_for(timeout=60_000)
        yield page
        browser.close()


def _shot(page: Any, name: str) -> None:
    """Screenshots go to $LLM_ADAPTERS_UI_SCREENSHOTS when set (docs/ui holds the README's)."""
    folder = os.environ.get("LLM_ADAPTERS_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_ui_listens_on_127_0_0_1_only(app: dict[str, Any]) -> None:
    import psutil

    # Gradio serves from the launching process; the listening socket is the app's port.
    listening = [c.laddr for c in psutil.Process(app["process"].pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == app["port"]]
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}


def test_ui_compare_answers_a_question_with_the_base_and_the_adapter(page: Any, app: dict[str, Any]) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-question textarea").fill("What is 13 plus 4?")
    page.locator("#compare-answer").click()
    page.get_by_text("Answered by 2 models").wait_for(timeout=120_000)
    answers = page.locator("#compare-answers")
    assert "base" in answers.inner_text() and app["run"].name in answers.inner_text()
    generations = [box.input_value() for box in answers.locator("textarea").all()]
    assert len(generations) == 2 and all(generations)  # tiny random models: some text, not the words
    _shot(page, "compare")


def test_ui_study_shows_the_hand_made_table_and_the_disagreements(page: Any) -> None:
    page.get_by_role("tab", name="Study").click()
    from playwright.sync_api import expect

    table = page.locator("#study-table")
    expect(table).to_contain_text("method=series,placement=mlp", timeout=30_000)
    text = table.inner_text()
    assert "method=lora,placement=attn" in text and "0.6667" in text and "0.9385" in text
    page.get_by_role("button", name="Show").click()
    page.get_by_text("3 answers on sums where base model (A) and method=lora,placement=attn (B) differ").wait_for(timeout=30_000)
    assert "What is 13 plus 4?" in page.content()
    _shot(page, "study")


def test_ui_runs_lists_the_fine_tune_run(page: Any, app: dict[str, Any]) -> None:
    page.get_by_role("tab", name="Runs").click()
    from playwright.sync_api import expect

    runs = page.locator("#runs-table")
    expect(runs).to_contain_text(str(app["run"]), timeout=30_000)
    assert "lora" in runs.inner_text() and "tiny-llama" in runs.inner_text()
    _shot(page, "runs")


def test_ui_every_request_stays_on_this_machine(page: Any, app: dict[str, Any]) -> None:
    """No CDN, no telemetry: after every tab has rendered and answered, the browser asked only the app."""
    assert page.requests and all(url.startswith(app["url"]) or url.startswith("data:") or url.startswith("blob:")
                                 for url in page.requests), [u for u in page.requests if not u.startswith(app["url"])]


def test_disagreements_of_a_study_scored_by_log_likelihood(tmp_path: Path) -> None:
    study = tmp_path / "ll"
    for name, values, right in (("a-s1", {"method": "lora", "seed": 1}, [True, False, True]),
                                ("b-s1", {"method": "series", "seed": 1}, [True, True, False])):
        folder = study / "runs" / f"{name}-0123456789"
        (folder / "eval" / "boolq").mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"id": name, "name": name, "values": values,
                                                        "method": values["method"], "seed": 1, "tasks": {}}))
        (folder / "eval" / "boolq" / "predictions.jsonl").write_text("".join(json.dumps({
            "index": i, "prompt": f"### Instruction:\nq{i}\n\n### Response:\n", "gold": "true",
            "loglik_prediction": "true" if r else "false", "loglik_correct": r}) + "\n" for i, r in enumerate(right)))
    found = studies.disagreements(study, "method=lora", "method=series", "boolq")
    assert [(d["index"], d["a_correct"], d["b_correct"], d["a_answer"]) for d in found] == [
        (1, False, True, "false"), (2, True, False, "true")]
