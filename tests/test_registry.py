"""The method registry: every record is consistent, and the PEFT tuner types reachable as `peft:<type>` attach to
tiny LLaMA and BLOOM, train a step, save and reload."""
from __future__ import annotations

import json

import pytest
import torch

from llm_adapters.methods import METHODS, attach, get_method, load_adapter, save_adapter
from llm_adapters.methods.placement import PLACEMENTS
from llm_adapters.models import load_model
from helpers import one_step

# PEFT types the follow-up papers of this benchmark compare, with the smallest options that make sense here.
PEFT_TYPES = {
    "vera": {"r": 8}, "loha": {"r": 4}, "lokr": {"r": 4}, "adalora": {"init_r": 4, "target_r": 2, "total_step": 4},
    "oft": {"r": 4, "oft_block_size": 0}, "boft": {"boft_block_size": 4}, "fourierft": {"n_frequency": 64},
    "hra": {"r": 4},
}
TEXTS = ["Hello there, how", "The quick brown fox"]


def test_every_named_method_has_a_paper_and_a_default_placement_of_its_own():
    for name, method in METHODS.items():
        assert method.name == name and "(" in method.paper
        if method.acts_on_input:
            assert method.default_placement == "input"
        else:
            assert set(method.placements) == set(PLACEMENTS) - {"attn+mlp"}
            assert all(part in method.placements for part in method.default_placement.split("+"))


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-bloom"])
@pytest.mark.parametrize("peft_type", PEFT_TYPES)
def test_peft_type_attaches_trains_a_step_saves_and_reloads(arch, peft_type, tmp_path):
    model, tokenizer = load_model(arch)
    torch.manual_seed(0)
    peft_model = attach(model, {"method": f"peft:{peft_type}", "peft_options": PEFT_TYPES[peft_type]})
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    before, after = one_step(peft_model, batch, lr=5e-2)
    assert not torch.allclose(before, after, atol=1e-6), "one step did not change the model"
    save_adapter(peft_model, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == peft_type.upper()
    fresh, _ = load_model(arch)
    with torch.no_grad():
        reloaded = load_adapter(fresh, tmp_path / "adapter")(**batch).logits
    torch.testing.assert_close(reloaded, after, rtol=0, atol=1e-6)


def test_peft_options_are_validated_by_peft_and_named():
    with pytest.raises(ValueError, match=r"peft_options 'rank' is not VeraConfig field\(s\); accepted: .*\br\b"):
        attach(load_model("tiny-llama")[0], {"method": "peft:vera", "peft_options": {"rank": 8}})
    with pytest.raises(ValueError, match="unknown PEFT tuner type 'verra'; accepted after 'peft:': adalora"):
        get_method("peft:verra")
    with pytest.raises(ValueError, match="MiLoRA .* is not offered by PEFT 0.21"):
        get_method("milora")
    with pytest.raises(ValueError, match="peft_options are for peft:<type> methods, not 'lora'"):
        attach(load_model("tiny-llama")[0], {"method": "lora", "peft_options": {"r": 8}})


def test_finetune_runs_adalora_with_its_rank_budget_step(tmp_path):
    from llm_adapters.train import finetune, load_config

    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"}
                                for i in range(8)]))
    calls = []
    method = get_method("peft:adalora")
    original = method.after_optimizer_step
    object.__setattr__(method, "after_optimizer_step", lambda model, step: (calls.append(step), original(model, step)))
    try:
        out = finetune(load_config(base_model="tiny-llama", data=str(data), output_dir=str(tmp_path / "out"),
                                   adapter={"method": "peft:adalora", "peft_options": {"init_r": 4, "target_r": 2,
                                                                                      "total_step": 4}},
                                   batch_size=4, micro_batch_size=2, max_steps=4, warmup_steps=0, progress=False))
    finally:
        object.__setattr__(method, "after_optimizer_step", original)
    assert calls == [0, 1, 2, 3]  # the index of the step just taken, as PEFT's examples count
    assert (out / "adapter_model.safetensors").exists()
