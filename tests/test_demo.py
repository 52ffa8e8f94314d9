"""The demo job end to end on a tiny model: before/after evaluation around a fine-tuning run, resumable."""
from __future__ import annotations

import json

from llm_adapters.demo import DemoOptions, run_demo


def test_demo_runs_end_to_end_and_a_rerun_reuses_every_stage(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text(
        "base_model: tiny-llama\nadapter: paper-lora\ntemplate: alpaca\nmax_examples: 16\nnum_epochs: 1\n"
        "batch_size: 8\nmicro_batch_size: 4\nwarmup_steps: 0\nsave_steps: 10\nseed: 3\n"
    )
    out = tmp_path / "out"
    result = run_demo(DemoOptions(config=str(config), output_dir=str(out), n_test=8, batch_size=4))
    for name in ("results.md", "results.json", "before_after.png", "adapter/manifest.json",
                 "adapter/adapter_model.safetensors", "eval-before/synthetic-arithmetic/predictions.jsonl",
                 "eval-after/synthetic-arithmetic/summary.json"):
        assert (out / name).exists(), name
    train = json.loads((out / "data" / "synthetic-train.json").read_text())
    test = json.loads((out / "data" / "dataset" / "synthetic-arithmetic" / "test.json").read_text())
    assert len(train) == 16 and len(test) == 8
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}  # held out
    assert result["before"]["n"] == result["after"]["n"] == 8
    assert result["after"]["adapter"] == str(out / "adapter")
    assert "change:" in result["table"] and "| base |" in result["table"]

    manifest_time = (out / "adapter" / "manifest.json").stat().st_mtime
    again = run_demo(DemoOptions(config=str(config), output_dir=str(out), n_test=8, batch_size=4))
    assert (out / "adapter" / "manifest.json").stat().st_mtime == manifest_time  # training not redone
    assert again["after"]["accuracy"] == result["after"]["accuracy"]


def test_demo_trains_again_when_its_config_changed(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    settings = ("base_model: tiny-llama\nadapter: {method: lora, r: 4}\ntemplate: alpaca\nmax_examples: 8\n"
                "num_epochs: 1\nbatch_size: 4\nmicro_batch_size: 4\nwarmup_steps: 0\nseed: 3\n")
    config.write_text(settings + "learning_rate: 1.0e-3\n")
    out = tmp_path / "out"
    options = DemoOptions(config=str(config), output_dir=str(out), n_test=4, batch_size=4)
    first = run_demo(options)
    weights = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    config.write_text(settings + "learning_rate: 5.0e-2\n")  # an edited configs/demo.yaml
    again = run_demo(options)
    assert "learning_rate: 0.001 -> 0.05" in capsys.readouterr().out  # said, then trained again
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    assert manifest["config"]["learning_rate"] == 0.05
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() != weights
    # and the evaluation after fine-tuning is of the new adapter, not the old predictions kept
    assert again["after"]["model_identity"]["adapter"] != first["after"]["model_identity"]["adapter"]
