"""The web app (`llm-adapters ui`): Gradio, three tabs.

- Compare: a question, typed or picked from a benchmark task by index, answered by the base model and each adapter
  side by side (`pool.ModelPool`: loaded on the first question), with the extracted answer and, for a benchmark
  question, whether it is right;
- Study: a study's table with its intervals, its plots and paired comparisons (the report's files), and the
  questions on which two configurations disagree, their generations side by side (`studies.py`);
- Runs: fine-tune runs with their loss curves, settings and manifests (`runs.py`).

Offline and private by default: Gradio's analytics off (no telemetry, no version check), its own fonts and
scripts served by the app (no CDN), no share link, listening on 127.0.0.1 unless told otherwise. This module is the only one that imports Gradio (the optional extra `ui`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when Gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402

from llm_adapters.data.tasks import TASKS  # noqa: E402
from llm_adapters.data.templates import TEMPLATES  # noqa: E402
from llm_adapters.ui import runs as run_files  # noqa: E402
from llm_adapters.ui import studies  # noqa: E402
from llm_adapters.ui.config import UiConfig  # noqa: E402
from llm_adapters.ui.pool import ModelPool  # noqa: E402

TYPED = "(typed question)"
OWN_TEMPLATE = "(each model's own)"
DISAGREE_HEADER = ["index", "seed", "gold", "question", "A answer", "A right", "B answer", "B right", "A generation",
                   "B generation"]


# ------------------------------------------------------------------------------------------------ Compare

def _load_question(task: str, index: float | None, data_dir: str | None) -> tuple[str, str, str, str]:
    """(instruction, input, gold, status) of question `index` of a benchmark task."""
    from llm_adapters.data.io import load_task_data, resolve_data_dir
    from llm_adapters.errors import UserError

    if task == TYPED:
        return gr.update(), gr.update(), "", "Type a question, or pick a benchmark task and an index."
    try:
        records = load_task_data(TASKS[task], resolve_data_dir(data_dir)).records
    except (UserError, OSError) as error:
        return gr.update(), gr.update(), "", f"Cannot read {task}: {error}"
    i = int(index or 0)
    if not 0 <= i < len(records):
        return gr.update(), gr.update(), "", f"{task} has questions 0 to {len(records) - 1}, not {i}."
    record = records[i]
    return (record["instruction"], record.get("input", ""), str(record["answer"]),
            f"{task} question {i} of {len(records)} (gold answer hidden until the models answer).")


def _verdict(row: dict[str, Any]) -> str:
    """One model's line above its generation: the extracted answer, whether it is right, tokens, template."""
    parts = []
    if "answer" in row:
        parts.append(f"answer **{row['answer']}**" + {True: " (right)", False: " (wrong)"}.get(row.get("correct"), ""))
    parts += [f"{row['n_tokens']} tokens", f"template {row['template']}"]
    return " · ".join(parts)


def _ask(pool: ModelPool, instruction: str, input: str, task: str, gold: str, template: str, budget: float
         ) -> list[Any]:
    """The status line, then per model its verdict line and generation."""
    blank = [gr.update()] * (2 * len(pool.labels))
    if not pool.labels:
        return ["No base model: start the app with --base-model (and --adapter ...)."]
    if not (instruction or "").strip():
        return ["Type a question first.", *blank]
    chosen = None if task == TYPED else task
    rows = pool.ask(instruction, input, chosen, gold or None if chosen else None,
                    None if template == OWN_TEMPLATE else template, int(budget) if budget else None)
    status = f"Answered by {len(rows)} models" + (f"; gold answer: {gold}" if chosen and gold else "") + "."
    return [status, *[value for row in rows for value in (_verdict(row), row["generation"])]]


def _short(label: str) -> str:
    """An adapter's name in a column header: its folder's name (a study run's, for its adapter/ folder)."""
    path = Path(label)
    return path.parent.name if path.name == "adapter" else path.name


def _compare_tab(config: UiConfig, pool: ModelPool) -> None:
    where = ", ".join(pool.labels) if pool.labels else "no models (start with --base-model)"
    gr.Markdown(f"Each model answers with the evaluation's greedy decoding. Models: {where}. They load on the first "
                "question.")
    with gr.Row():
        task = gr.Dropdown([TYPED, *TASKS], value=TYPED, label="benchmark task", scale=2)
        index = gr.Number(value=0, precision=0, minimum=0, label="question index", scale=1)
        pick = gr.Button("Load question", scale=1)
    instruction = gr.Textbox(label="question (instruction)", lines=3, elem_id="compare-question")
    extra = gr.Textbox(label="input (optional)", lines=1)
    with gr.Row():
        template = gr.Dropdown([OWN_TEMPLATE, *TEMPLATES], value=OWN_TEMPLATE, label="template")
        budget = gr.Slider(1, 512, value=128, step=1, label="max new tokens")
    gold = gr.State("")
    ask = gr.Button("Answer", variant="primary", elem_id="compare-answer")
    status = gr.Markdown(elem_id="compare-status")
    answers = []
    with gr.Row(elem_id="compare-answers", equal_height=True):
        for label in pool.labels:
            with gr.Column():
                gr.Markdown(f"**{_short(label)}**")
                answers += [gr.Markdown(), gr.Textbox(label="generation", lines=8, max_lines=30, interactive=False)]
    pick.click(lambda t, i: _load_question(t, i, config.data_dir), [task, index], [instruction, extra, gold, status])
    ask.click(lambda *a: _ask(pool, *a), [instruction, extra, task, gold, template, budget], [status, *answers])


# ------------------------------------------------------------------------------------------------ Study

def _study_view(study: str | None) -> tuple[Any, ...]:
    if not study:
        empty = gr.update(choices=[], value=None)
        return [], [], [], "No study: start the app with --study DIR.", empty, empty, empty
    header, rows = studies.table(study)
    note = (f"{study}: the report's table, plots and comparisons (llm-adapters study report)." if header else
            f"{study} has no report yet: run `llm-adapters study report {study}`.")
    compared_header, compared = studies.comparisons(study)
    labels, tasks = list(studies.configurations(study)), studies.tasks(study)
    return (gr.update(value=rows, headers=header or None),
            gr.update(value=compared, headers=compared_header or None, visible=bool(compared_header)),
            [str(p) for p in studies.plots(study)], note,
            gr.update(choices=labels, value=labels[0] if labels else None),
            gr.update(choices=labels, value=labels[1] if len(labels) > 1 else None),
            gr.update(choices=tasks, value=tasks[0] if tasks else None))


def _disagreements(study: str | None, a: str | None, b: str | None, task: str | None) -> tuple[list[list[Any]], str]:
    if not (study and a and b and task):
        return [], "Pick two configurations and a task."
    rows = studies.disagreements(study, a, b, task)
    table = [[r["index"], r["seed"], r["gold"], r["question"], r["a_answer"], "yes" if r["a_correct"] else "no",
              r["b_answer"], "yes" if r["b_correct"] else "no", r["a_generation"], r["b_generation"]] for r in rows]
    return table, (f"{len(rows)} answer{'' if len(rows) == 1 else 's'} on {task} where {a} (A) and {b} (B) differ "
                   "in being right.")


def _study_tab(config: UiConfig) -> tuple[Any, list[Any]]:
    choice = gr.Dropdown(list(config.study), value=config.study[0] if config.study else None, label="study",
                         elem_id="study-choice")
    note = gr.Markdown()
    table = gr.Dataframe(label="table: mean over seeds, 95 % interval", interactive=False, wrap=True,
                         elem_id="study-table")
    plots = gr.Gallery(label="plots", columns=3, height=360, object_fit="contain", preview=False)
    compared = gr.Dataframe(label="paired comparisons", interactive=False, wrap=True)
    gr.Markdown("**Questions on which two configurations disagree** (same question, same seed)")
    with gr.Row():
        a, b = gr.Dropdown(label="configuration A"), gr.Dropdown(label="configuration B")
        task = gr.Dropdown(label="task")
        show = gr.Button("Show")
    verdict = gr.Markdown()
    differing = gr.Dataframe(headers=DISAGREE_HEADER, interactive=False, wrap=True, max_height=900,
                             column_widths=["5%", "5%", "6%", "20%", "6%", "5%", "6%", "5%", "21%", "21%"])
    outputs = [table, compared, plots, note, a, b, task]
    choice.change(_study_view, choice, outputs)
    show.click(_disagreements, [choice, a, b, task], [differing, verdict])
    return choice, outputs


# ------------------------------------------------------------------------------------------------ Runs

def _run_view(run: str | None) -> tuple[Any, Any, Any]:
    if not run:
        return None, {}, {}
    folder = Path(run) / "adapter" if (Path(run) / "adapter" / "manifest.json").is_file() else Path(run)
    curve = run_files.loss_curve(folder)
    return (str(curve) if curve else None), run_files.settings(folder), run_files.manifest(folder)


def _runs_tab(roots: list[str]) -> tuple[Any, list[Any]]:
    found = run_files.find_runs(roots)
    gr.Markdown(f"Fine-tune runs under {', '.join(roots) or '(no folder: start with --runs DIR or --study DIR)'}: "
                f"{len(found)} found.")
    gr.Dataframe(value=[run_files.summary(r) for r in found], headers=run_files.SUMMARY_HEADER, interactive=False,
                 label="runs", elem_id="runs-table")
    labels = [run_files.label(r) for r in found]
    choice = gr.Dropdown(labels, value=labels[0] if labels else None, label="run")
    with gr.Row():
        curve = gr.Image(label="loss curve", type="filepath", height=320)
        settings = gr.JSON(label="settings")
    with gr.Accordion("manifest.json", open=False):
        manifest = gr.JSON()
    choice.change(_run_view, choice, [curve, settings, manifest])
    return choice, [curve, settings, manifest]


def build_app(config: UiConfig) -> gr.Blocks:
    """The three tabs, with nothing loaded yet."""
    pool = ModelPool(config.base_model, config.adapter, config.device)
    roots = [config.runs] if config.runs else [str(Path(s) / "runs") for s in config.study]
    with gr.Blocks(title="llm-adapters", analytics_enabled=False) as app:
        gr.Markdown("## llm-adapters: try, compare and ship adapters")
        with gr.Tab("Compare", elem_id="tab-compare"):
            _compare_tab(config, pool)
        with gr.Tab("Study", elem_id="tab-study"):
            study_choice, study_outputs = _study_tab(config)
        with gr.Tab("Runs", elem_id="tab-runs"):
            run_choice, run_outputs = _runs_tab(roots)
        app.load(_study_view, study_choice, study_outputs)
        app.load(_run_view, run_choice, run_outputs)
    app.pool = pool  # for tests and callers: which models were loaded
    return app


def launch(config: UiConfig, block: bool = True) -> gr.Blocks:
    """Serve the app on config.host:config.port (files only from the study and run folders given)."""
    app = build_app(config)
    allowed = [str(Path(p).resolve()) for p in (*config.study, *([config.runs] if config.runs else []))]
    app.queue().launch(server_name=config.host, server_port=config.port, share=False, inbrowser=False,
                       prevent_thread_lock=not block, allowed_paths=allowed, ssr_mode=False, mcp_server=False,
                       footer_links=[], quiet=False)
    return app
