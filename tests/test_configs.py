"""Every shipped YAML config loads and validates: one case per file, found by a recursive glob."""
from __future__ import annotations

from pathlib import Path

import pytest

from llm_adapters.train import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Study specs (test_study.py checks them) and launcher configs (below) are not fine-tuning configs.
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if not {"studies", "launch"} & set(p.parts))
LAUNCH = sorted((CONFIGS / "launch").iterdir())


def test_configs_folder_ships_the_paper_runs_and_the_demo():
    names = {str(p.relative_to(CONFIGS)) for p in FILES}
    families, methods = ("llama-7b", "llama-13b", "bloomz-7b1", "gpt-j-6b"), ("lora", "series", "parallel")
    expected = {f"paper/{f}-{m}.yaml" for f in families for m in methods} | {"paper/llama-7b-prefix.yaml", "demo.yaml"}
    assert expected <= names


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CONFIGS)) for p in FILES])
def test_config_opens_with_its_command_and_validates(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# ") and "llm-adapters finetune --config" in first_line, \
        "first line: the command that runs it"
    assert load_config(path).spec.method


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_config_parses_and_names_its_command(path):
    import json

    import yaml

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        settings = json.loads(text)
        assert settings["zero_optimization"]["stage"] in (2, 3) and "llm_adapters finetune" in settings["_comment"]
    elif path.suffix == ".yaml":
        assert yaml.safe_load(text)["distributed_type"] == "FSDP" and "llm_adapters finetune" in text.splitlines()[0]
    else:
        assert text.startswith("#!/bin/bash\n# sbatch configs/launch/")
        assert "llm-adapters study run" in text or "-m llm_adapters finetune" in text
