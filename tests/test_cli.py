"""The command line as a whole: `python -m llm_adapters`, --version, the methods listing, the README's method
table against the registry."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from llm_adapters import __version__
from llm_adapters.cli import main
from llm_adapters.methods import METHODS, peft_types

ROOT = Path(__file__).resolve().parents[1]


def test_python_dash_m_runs_the_cli_and_prints_the_version():
    result = subprocess.run([sys.executable, "-m", "llm_adapters", "--version"], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin",
                                           "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"llm-adapters {__version__}"


def test_methods_command_lists_every_method_and_the_peft_types(capsys):
    assert main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listing["methods"]] == list(METHODS)
    assert listing["peft_types"] == peft_types() and {"vera", "loha", "lokr", "adalora"} <= set(peft_types())
    assert "milora" in listing["not_offered"]
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert all(f"{name:<9} " in text for name in METHODS) and "peft:<type>" in text


def test_readme_method_table_matches_the_registry():
    """The README's table: one row per named method, with its paper name and whether it merges."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z0-9]+)` \| (.+?) \| .+ \| (yes|no)[^|]*\|$", readme, flags=re.MULTILINE)
    assert [name for name, _, _ in rows] == list(METHODS)
    for name, paper, merges in rows:
        method = METHODS[name]
        assert paper == method.paper, name
        assert (merges == "yes") == bool(method.merges), name


def test_export_generate_and_ui_settings_all_have_help_and_their_commands_print_it(capsys):
    import dataclasses

    import pytest

    from llm_adapters.compare import GenerateConfig
    from llm_adapters.export import ExportConfig
    from llm_adapters.ui import UiConfig

    for cls in (ExportConfig, GenerateConfig, UiConfig):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls.__name__
    for command in ("export", "generate", "ui"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0 and f"llm-adapters {command}" in capsys.readouterr().out
