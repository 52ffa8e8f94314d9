"""`llm-adapters params`: the paper's #params column on the meta-device presets, and the errors of bad specs."""
from __future__ import annotations

import json

import pytest

from llm_adapters.cli import main

# original-system.md A.6: percent = 100 * trainable / (base + trainable)
PAPER_PERCENT = [
    ("llama-7b", "paper-series", 0.99),
    ("llama-7b", "paper-parallel", 3.54),
    ("llama-7b", "paper-lora", 0.83),
    ("llama-13b", "paper-series", 0.80),
    ("llama-13b", "paper-parallel", 2.89),
    ("llama-13b", "paper-lora", 0.67),
    ("llama-13b", "paper-prefix", 0.03),
]


@pytest.mark.parametrize("model,preset,percent", PAPER_PERCENT)
def test_params_json_reproduces_paper_percentages(model, preset, percent, capsys):
    assert main(["params", "--model", model, "--preset", preset, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert set(counts) == {"trainable", "total", "percent"}
    assert round(counts["percent"], 2) == percent


def test_params_counts_follow_the_formulas():
    """Independent formulas (A.6): LoRA r*(in+out) per module; series 2*d*bn per layer."""
    import io
    from contextlib import redirect_stdout

    def count(*flags):
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            main(["params", "--json", *flags])
        return json.loads(buffer.getvalue())["trainable"]

    d, f, layers = 4096, 11008, 32
    assert count("--model", "llama-7b", "--method", "lora", "--r", "32", "--placement", "attn+mlp") == \
        layers * 32 * (3 * (d + d) + (d + f) + (f + d))
    assert count("--model", "llama-7b", "--method", "series", "--bottleneck-size", "64", "--placement", "attn") == \
        layers * 2 * d * 64
    assert count("--model", "gpt-j-6b", "--preset", "paper-parallel") == 28 * ((d * 256 + 256 * 16384) * 2)


@pytest.mark.parametrize("flags,message", [
    (["--method", "bogus"], "unknown method 'bogus'; accepted: lora, dora, rslora, pissa, olora, series, "
                            "parallel, ia3, prefix, prompt, ptuning, or peft:<type> for a PEFT tuner type"),
    (["--method", "lora", "--placement", "everywhere"], "unknown placement 'everywhere'; accepted: attn, mlp, "
                                                        "attn+mlp, or module names of this llama model: "),
    (["--method", "lora", "--placement", "q_proj,w_proj"], "no module named 'w_proj' in this llama model; its "
                                                           "Linear modules are: self_attn.q_proj"),
    (["--method", "lora", "--r", "0"], "r must be a positive integer, got 0"),
    (["--method", "series", "--bottleneck-size", "-3"], "bottleneck_size must be a positive integer, got -3"),
    (["--method", "parallel", "--non-linearity", "tanhh"], "unknown activation 'tanhh'; accepted: "),
    (["--preset", "paper-everything"], "unknown preset 'paper-everything'; accepted: paper-lora"),
])
def test_bad_spec_gives_one_clear_line(flags, message, capsys):
    assert main(["params", "--model", "tiny-llama", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("llm-adapters params: error: ")
    assert message in err
