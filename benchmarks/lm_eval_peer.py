"""lm-eval's side of `eval_peers.py`: our prompts as local custom tasks, timed inside one process.

Runs under lm-eval's own virtual environment (see eval_peers.py for how to make it), never under ours:

    /path/to/lmeval-venv/bin/python benchmarks/lm_eval_peer.py REQUEST.json RESULT.json

REQUEST.json: {"mode": "generate" | "loglik", "batch_size": 32, "tasks": {name: {"prompts": [...],
"max_gen_toks": 256} or {"prompts": [...], "choices": [...]}}}. The model is the embedded SmolLM2 loaded by
`llm_adapters.models.load_model` (the same weights as ours) and wrapped in lm-eval's `HFLM`. Each task becomes a
JSON-lines file and a task YAML (`dataset_path: json`, `doc_to_text: "{{prompt}}"`) read through
`TaskManager(include_path=...)`, offline. Timed: `lm_eval.evaluator.evaluate` alone (the tasks are built
before, the model loaded before). RESULT.json: {"seconds": s, "tasks": {name: [response per prompt]}}: the
generated text, or the log-likelihood of each choice.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from lm_eval import evaluator  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager, get_task_dict  # noqa: E402

from llm_adapters.models import load_model  # noqa: E402


def _task_yaml(name: str, data: Path, spec: dict) -> str:
    head = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\ndoc_to_text: \"{{prompt}}\"\ntarget_delimiter: \"\"\n")
    if "choices" in spec:
        return head + ("output_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: 0\n"
                       "metric_list:\n  - metric: acc\n")
    return head + ("output_type: generate_until\ndoc_to_target: \"\"\ngeneration_kwargs:\n"
                   f"  until: []\n  max_gen_toks: {spec['max_gen_toks']}\n  do_sample: false\n"
                   "metric_list:\n  - metric: exact_match\n")


def main(request_path: str, result_path: str) -> None:
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    model, tokenizer = load_model("smollm2-135m")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=request["batch_size"], device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        names = {}  # lm-eval's task name -> ours
        for ours, spec in request["tasks"].items():
            name = "peer_" + "".join(c if c.isalnum() else "_" for c in ours)
            data = Path(folder) / f"{name}.jsonl"
            with data.open("w", encoding="utf-8") as handle:
                for prompt in spec["prompts"]:
                    handle.write(json.dumps({"prompt": prompt, "choices": spec.get("choices", [])}) + "\n")
            (Path(folder) / f"{name}.yaml").write_text(_task_yaml(name, data, spec), encoding="utf-8")
            names[name] = ours
        task_dict = get_task_dict(list(names), TaskManager(include_path=folder))
        start = time.perf_counter()
        output = evaluator.evaluate(lm, task_dict, log_samples=True, bootstrap_iters=0, verbosity="WARNING")
        seconds = time.perf_counter() - start
    responses = {}
    for name, ours in names.items():
        samples = sorted(output["samples"][name], key=lambda sample: sample["doc_id"])
        if "choices" in request["tasks"][ours]:
            responses[ours] = [[float(r[0][0]) for r in sample["resps"]] for sample in samples]
        else:
            responses[ours] = [sample["resps"][0][0] for sample in samples]
    Path(result_path).write_text(json.dumps({"seconds": seconds, "tasks": responses}), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
