"""`llm-adapters generate`: the base and each adapter answer side by side, each answer the one a plain batch-1
argmax loop gives, with the SmolLM2 tokenizer (tiny random weights) and a perturbed adapter."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llm_adapters.cli import main
from llm_adapters.data.templates import adds_special_tokens, build_prompt
from llm_adapters.methods import attach, load_adapter, save_adapter
from llm_adapters.models import load_model, load_tokenizer
from helpers import perturb

RECORDS = [{"instruction": "What is 12 plus 30?", "input": ""},
           {"instruction": "Is the sky blue?", "input": "Answer true or false."},
           {"instruction": "Name a prime number larger than 10.", "input": ""}]
BUDGET = 12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random LLaMA with SmolLM2's real tokenizer, saved as a model folder, and a perturbed LoRA adapter
    on it whose run manifest says it was trained with the alpaca template."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = load_tokenizer("smollm2-135m")
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    peft_model = attach(load_model(str(root / "base"))[0], {"method": "lora", "r": 4, "alpha": 8})
    perturb(peft_model, scale=0.5)
    save_adapter(peft_model, root / "adapter")
    (root / "adapter" / "manifest.json").write_text(json.dumps({"config": {"template": "alpaca"}}))
    return root / "base", root / "adapter"


def _argmax_loop(model: Any, tokenizer: Any, prompt: str, template: str) -> str:
    """Greedy decoding the plainest way: one prompt, the whole sequence through the model at every step."""
    ids = tokenizer(prompt, add_special_tokens=adds_special_tokens(template))["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(BUDGET):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    return tokenizer.decode(new, skip_special_tokens=True)


def _generate(argv: list[str], capsys: pytest.CaptureFixture) -> list[dict[str, Any]]:
    assert main(["generate", *argv, "--max-new-tokens", str(BUDGET), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_generate_answers_side_by_side_as_a_batch_1_argmax_loop_does(models: tuple[Path, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    base, adapter = models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    rows = _generate(["--base-model", str(base), "--adapter", str(adapter), "--prompts", str(prompts)], capsys)
    assert [(r["instruction"], r["model"]) for r in rows] == [(x["instruction"], m) for x in RECORDS
                                                              for m in ("base", str(adapter))]
    model, tokenizer = load_model(str(base))
    tuned = load_adapter(load_model(str(base))[0], adapter)
    for row, record in zip(rows, [x for x in RECORDS for _ in range(2)]):
        # The adapter's template is its manifest's; the base takes the adapters' common one.
        assert row["template"] == "alpaca"
        assert row["prompt"] == build_prompt(record["instruction"], record["input"], template="alpaca")
        expected = _argmax_loop(tuned if row["model"] != "base" else model, tokenizer, row["prompt"], "alpaca")
        assert row["generation"] == expected and row["input"] == record["input"]
    assert rows[0]["generation"] != rows[1]["generation"]  # the adapter changes the answers: the test can fail


def test_generate_template_flag_wins_and_a_file_of_lines_is_one_prompt_a_line(
        models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, adapter = models
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 12 plus 30?\n\nName a colour.\n")
    rows = _generate(["--base-model", str(base), "--adapter", str(adapter), "--prompts", str(prompts),
                      "--template", "original"], capsys)
    assert [r["instruction"] for r in rows] == ["What is 12 plus 30?"] * 2 + ["Name a colour."] * 2
    assert {r["template"] for r in rows} == {"original"}
    model, tokenizer = load_model(str(base))
    assert rows[2]["prompt"] == build_prompt("Name a colour.", template="original")
    assert rows[2]["generation"] == _argmax_loop(model, tokenizer, rows[2]["prompt"], "original")


def test_generate_with_a_task_extracts_the_answer_and_prints_text_side_by_side(
        models: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    base, adapter = models
    assert main(["generate", "--base-model", str(base), "--adapter", str(adapter), "--prompt", "What is 2 + 3?",
                 "--task", "gsm8k", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### What is 2 + 3?\n--- base (alpaca, ") and f"\n--- {adapter} (alpaca, " in out
    assert out.count("[answer: ") == 2


@pytest.mark.parametrize("argv, words", [
    ([], "give one of --prompt TEXT or --prompts FILE"),
    (["--prompt", "x", "--task", "gsm9k"], "task 'gsm9k' is not one of"),
    (["--prompts", "missing.jsonl"], "no such prompts file: missing.jsonl"),
])
def test_generate_bad_input_is_one_line(models: tuple[Path, Path], argv: list[str], words: str,
                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--base-model", str(models[0]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_generate_prompts_file_record_without_instruction_names_file_record_and_field(
        models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"instruction": "ok"}\n{"input": "no instruction"}\n')
    assert main(["generate", "--base-model", str(models[0]), "--prompts", str(prompts)]) == 2
    assert f"{prompts}, record 1, field 'instruction': missing" in capsys.readouterr().err
