"""Save every method x tiny architecture, reload each in one fresh process, compare logits exactly (PiSSA and
OLoRA, saved as a LoRA of rank 2r that represents the same weights, within float error)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import save_file

from llm_adapters.methods import METHODS, attach, save_adapter
from llm_adapters.models import TINY_MODELS, load_model
from helpers import perturb

TEXTS = ["Hello there, how", "The quick brown fox"]


def test_save_then_load_in_fresh_process_gives_identical_logits(tmp_path):
    cells = []
    for arch in TINY_MODELS:
        for method in METHODS:
            if arch == "tiny-gpt2" and not METHODS[method].conv1d:
                continue
            model, tokenizer = load_model(arch)
            peft_model = attach(model, {"method": method, "bottleneck_size": 8, "r": 4, "num_virtual_tokens": 3})
            folder = tmp_path / f"{arch}-{method}"
            # PiSSA and OLoRA rewrite the base weights: saved as the difference to their initial state, they
            # load onto an untouched base (checked below, in a process that never saw the rewritten one).
            initial = tmp_path / f"{arch}-{method}-initial" if METHODS[method].rewrites_base else None
            if initial is not None:
                save_adapter(peft_model, initial)
            perturb(peft_model, scale=0.3)
            peft_model.eval()
            save_adapter(peft_model, folder, initial=initial)
            assert (folder / "adapter_model.safetensors").exists() and not (folder / "adapter_model.bin").exists()
            with torch.no_grad():
                logits = peft_model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits
            save_file({"logits": logits.contiguous()}, str(folder / "expected.safetensors"))
            cells.append([arch, str(folder)])
    script = textwrap.dedent("""
        import json, sys
        import torch
        from safetensors.torch import load_file
        import llm_adapters  # registers the bottleneck method
        from llm_adapters.methods import load_adapter
        from llm_adapters.models import load_model
        failures = []
        for arch, folder in json.loads(sys.argv[1]):
            model, tokenizer = load_model(arch)
            peft_model = load_adapter(model, folder)
            with torch.no_grad():
                logits = peft_model(**tokenizer(json.loads(sys.argv[2]), return_tensors="pt", padding=True)).logits
            expected = load_file(folder + "/expected.safetensors")["logits"]
            converted = "pissa" in folder or "olora" in folder  # a LoRA of rank 2r: the same weights, in floats
            if not torch.allclose(logits, expected, rtol=0, atol=2e-4 if converted else 0):
                failures.append((folder, float((logits - expected).abs().max())))
        print(json.dumps(failures))
    """)
    result = subprocess.run([sys.executable, "-c", script, json.dumps(cells), json.dumps(TEXTS)],
                            capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
