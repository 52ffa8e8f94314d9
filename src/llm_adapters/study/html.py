"""report.html: one self-contained page (no network: the plots inlined as data: URIs, the script and its data
inline, no framework) with the table, the comparisons, the plots and a per-question disagreement browser: choose
two configurations and see the questions where their means over seeds differ, with every seed's generation side
by side. `report.py` computes the numbers and the texts; this file only lays them out."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
td.n { text-align: right; white-space: nowrap; }
.note { color: #444; max-width: 60em; }
figure { display: inline-block; margin: .5em; }
img { max-width: 560px; border: 1px solid #ddd; }
.controls label { margin-right: 1em; }
section.q { border-top: 1px solid #ccc; padding: .5em 0; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.ans { border-left: 4px solid #999; padding: .1em .5em; margin: .3em 0; }
.ans.ok { border-color: #2a9d4a; } .ans.bad { border-color: #c0392b; }
pre { white-space: pre-wrap; margin: .2em 0; font-size: 12px; background: #f7f7f7; padding: .3em; }
"""

# The browser: plain DOM calls, every text set through textContent (generations are never parsed as HTML).
_SCRIPT = r"""
const data = JSON.parse(document.getElementById('browser-data').textContent);
const keys = Object.keys(data.configurations);
const tasks = Object.keys(data.questions);
const $ = (id) => document.getElementById(id);
function add(parent, tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  parent.appendChild(node);
  return node;
}
function fill(select, values, chosen) {
  values.forEach((value, i) => { const o = add(select, 'option', value); o.value = value; o.selected = i === chosen; });
}
fill($('a'), keys, 0);
fill($('b'), keys, Math.min(1, keys.length - 1));
fill($('task'), ['all tasks'].concat(tasks), 0);
function mean(key, task, q) {
  let sum = 0;
  for (const run of data.configurations[key]) {
    const given = (data.answers[run.run] || {})[task];
    if (!given || !(q in given)) return null;
    sum += given[q][0];
  }
  return sum / data.configurations[key].length;
}
function side(parent, key, task, q) {
  const column = add(parent, 'div');
  add(column, 'h4', key);
  for (const run of data.configurations[key]) {
    const [correct, prediction, generation] = data.answers[run.run][task][q];
    const box = add(column, 'div', null, correct ? 'ans ok' : 'ans bad');
    add(box, 'b', (run.seed === null ? run.name : 'seed ' + run.seed) + (correct ? ' \u2713 ' : ' \u2717 ') +
        'answer: ' + (prediction === null ? '(none)' : prediction));
    if (generation !== null && generation !== undefined) add(box, 'pre', generation);
  }
}
function show() {
  const a = $('a').value, b = $('b').value, only = $('task').value;
  const list = $('list');
  list.textContent = '';
  let shown = 0, asked = 0;
  for (const task of tasks) {
    if (only !== 'all tasks' && only !== task) continue;
    const indices = Object.keys(data.questions[task]).sort((x, y) => x - y);
    for (const q of indices) {
      const ma = mean(a, task, q), mb = mean(b, task, q);
      if (ma === null || mb === null) continue;
      asked += 1;
      if (ma === mb) continue;
      shown += 1;
      const question = data.questions[task][q];
      const section = add(list, 'section', null, 'q');
      add(section, 'h3', task + ' #' + q + ' \u2014 gold: ' + question.gold + ' \u2014 right: ' +
          (100 * ma).toFixed(0) + ' % of A\'s seeds, ' + (100 * mb).toFixed(0) + ' % of B\'s');
      const details = add(section, 'details');
      add(details, 'summary', 'prompt');
      add(details, 'pre', question.prompt);
      const columns = add(section, 'div', null, 'cols');
      side(columns, a, task, q);
      side(columns, b, task, q);
    }
  }
  $('count').textContent = shown + ' of ' + asked + ' questions answered by both where A and B disagree ' +
    '(their means over seeds differ).';
}
['a', 'b', 'task'].forEach((id) => $(id).addEventListener('change', show));
show();
"""


def _table(header: list[str], rows: list[list[str]], first_text_columns: int) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{'' if i < first_text_columns else ' class=n'}>{html.escape(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(path.stem)}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def _json_for_script(value: Any) -> str:
    """JSON that cannot end its <script> element: every '<' written as \\u003c (still the same JSON)."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def render_html(title: str, table: tuple[list[str], list[list[str]]],
                comparisons: tuple[list[str], list[list[str]]], sentences: list[str], plots: list[Path],
                browser: dict[str, Any], notes: tuple[str, str],
                hypotheses: tuple[list[str], list[list[str]], str] | None = None) -> str:
    """The page, as text.

    Args:
        table, comparisons: (header, rows of text) from `report.table_view` and `report.comparison_view`.
        hypotheses: (header, rows, note) of `report.hypotheses_view` where the study pre-registered some.
        sentences: one per comparison (`report.sentence`).
        plots: PNG files, inlined.
        browser: `records.answers(...)`: configurations, questions and each run's answers.
        notes: the table's and the comparisons' explanations.
    """
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<h2>Accuracy</h2>", _table(*table, first_text_columns=2),
             f"<p class=note>{html.escape(notes[0])}</p>"]
    if hypotheses and hypotheses[1]:
        parts += ["<h2>Pre-registered hypotheses</h2>", f"<p class=note>{html.escape(hypotheses[2])}</p>",
                  _table(hypotheses[0], hypotheses[1], first_text_columns=3)]
    parts += ["<h2>Comparisons</h2>",
             f"<p class=note>{html.escape(notes[1])}</p>"]
    if comparisons[1]:
        parts += [_table(*comparisons, first_text_columns=3),
                  "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>"]
    parts += ["<h2>Plots</h2>", "".join(_image(p) for p in plots),
              "<h2>Where two configurations disagree</h2>",
              "<p class=controls><label>A <select id=a></select></label><label>B <select id=b></select></label>"
              "<label>task <select id=task></select></label></p>", "<p id=count></p><div id=list></div>",
              f'<script type="application/json" id="browser-data">{_json_for_script(browser)}</script>',
              f"<script>{_SCRIPT}</script></body></html>"]
    return "\n".join(parts) + "\n"
