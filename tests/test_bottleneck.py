"""The bottleneck PEFT method: formulas computed independently, PEFT lifecycle, registration."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, get_peft_model

from llm_adapters.methods import attach
from llm_adapters.methods.bottleneck import BottleneckConfig, BottleneckLayer
from llm_adapters.models import load_model
from helpers import perturb


def _layer(model, name="model.layers.0.mlp.down_proj"):
    layer = model.get_submodule("base_model.model." + name)
    assert isinstance(layer, BottleneckLayer)
    return layer


def _adapter(z, down, up, act=torch.tanh, s=1.0):
    """A(z) = s * up(act(down(z))), with plain matrix products (dropout is 0)."""
    return s * (act(z @ down.T) @ up.T)


def _capture_io(module, x_shape):
    x = torch.randn(*x_shape)
    return x, module(x)


def test_init_zeros_starts_at_the_identity_and_paper_draws_both_projections_from_n_0_002():
    model, _ = load_model("tiny-llama")
    zeros = _layer(attach(model, {"method": "series", "bottleneck_size": 8, "init": "zeros"}))
    assert not zeros.adapter_up["default"].weight.any() and zeros.adapter_down["default"].weight.any()
    model, _ = load_model("tiny-llama")
    paper = _layer(attach(model, {"method": "series", "bottleneck_size": 64, "init": "paper"}))
    for weight in (paper.adapter_down["default"].weight, paper.adapter_up["default"].weight):
        assert abs(float(weight.detach().mean())) < 0.003 and 0.018 < float(weight.detach().std()) < 0.022  # 4096 draws each


def test_series_output_side_matches_formula():
    model, _ = load_model("tiny-llama")
    peft_model = attach(model, {"method": "series", "placement": "mlp", "bottleneck_size": 8, "scaling": 0.7})
    layer = _layer(peft_model)
    torch.nn.init.normal_(layer.adapter_up["default"].weight, std=0.1)  # off the identity start
    W = layer.base_layer.weight
    down, up = layer.adapter_down["default"].weight, layer.adapter_up["default"].weight
    x, y = _capture_io(layer, (2, 3, W.shape[1]))
    base = x @ W.T
    torch.testing.assert_close(y, base + _adapter(base, down, up, s=0.7))


def test_series_input_side_matches_formula():
    model, _ = load_model("tiny-llama")
    peft_model = attach(model, {"method": "series", "placement": "down_proj", "series_side": "input",
                                "bottleneck_size": 8, "init": "paper", "non_linearity": "relu"})
    layer = _layer(peft_model)
    W = layer.base_layer.weight
    down, up = layer.adapter_down["default"].weight, layer.adapter_up["default"].weight
    assert down.shape == (8, W.shape[1]) and up.shape == (W.shape[1], 8)  # acts on the layer's input width
    x, y = _capture_io(layer, (2, 3, W.shape[1]))
    torch.testing.assert_close(y, (x + _adapter(x, down, up, act=torch.relu)) @ W.T)


def test_parallel_matches_formula_and_maps_in_to_out():
    model, _ = load_model("tiny-opt")  # OPT's fc1 has a bias
    peft_model = attach(model, {"method": "parallel", "placement": "fc1", "bottleneck_size": 8, "init": "paper"})
    layer = _layer(peft_model, "model.decoder.layers.0.fc1")
    W, b = layer.base_layer.weight, layer.base_layer.bias
    down, up = layer.adapter_down["default"].weight, layer.adapter_up["default"].weight
    assert down.shape == (8, W.shape[1]) and up.shape == (W.shape[0], 8)
    x, y = _capture_io(layer, (2, 3, W.shape[1]))
    torch.testing.assert_close(y, x @ W.T + b + _adapter(x, down, up))


@pytest.mark.parametrize("variant", ["series", "parallel"])
def test_dropout_acts_on_the_adapter_input_as_in_the_original(variant):
    """A(z) = up(act(down(drop(z)))): with the same random state, the layer equals the formula with dropout on
    z (and not on down(z), where it used to be)."""
    model, _ = load_model("tiny-llama")
    peft_model = attach(model, {"method": variant, "placement": "down_proj", "bottleneck_size": 8,
                                "adapter_dropout": 0.5, "init": "paper"})
    layer = _layer(peft_model)
    layer.train()
    W = layer.base_layer.weight
    down, up = layer.adapter_down["default"].weight, layer.adapter_up["default"].weight
    x = torch.randn(2, 3, W.shape[1])
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    z = x @ W.T if variant == "series" else x  # series (output side) adapts the output, parallel the input
    expected = x @ W.T + _adapter(torch.nn.functional.dropout(z, p=0.5, training=True), down, up)
    torch.testing.assert_close(y, expected)


def test_learned_scaling_is_trained_and_saved(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    peft_model = attach(model, {"method": "series", "bottleneck_size": 8, "scaling": "learned", "init": "paper"})
    layer = _layer(peft_model)
    assert layer.adapter_scale["default"].requires_grad and float(layer.adapter_scale["default"].detach()) == 1.0
    batch = tokenizer(["abc def"], return_tensors="pt")
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    assert layer.adapter_scale["default"].grad is not None
    peft_model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert any("adapter_scale" in key for key in load_file(tmp_path / "adapter_model.safetensors"))


def test_adapter_weights_stay_fp32_on_a_half_precision_base():
    model, tokenizer = load_model("tiny-llama")
    model = model.to(torch.bfloat16)
    peft_model = attach(model, {"method": "parallel", "bottleneck_size": 8, "init": "paper"})
    layer = _layer(peft_model)
    assert layer.adapter_down["default"].weight.dtype == torch.float32
    logits = peft_model(**tokenizer(["abc"], return_tensors="pt")).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_named_adapters_switch_and_disable():
    model, tokenizer = load_model("tiny-llama")
    batch = tokenizer(["hello world"], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
    peft_model = attach(model, {"method": "series", "bottleneck_size": 8, "init": "paper"}, adapter_name="one")
    attach(peft_model, {"method": "parallel", "bottleneck_size": 4, "init": "paper"}, adapter_name="two")
    peft_model.eval()
    with torch.no_grad():
        out_one = peft_model(**batch).logits
        peft_model.set_adapter("two")
        out_two = peft_model(**batch).logits
        with peft_model.disable_adapter():
            disabled = peft_model(**batch).logits
    assert not torch.allclose(out_one, out_two)
    assert not torch.allclose(out_one, base)
    torch.testing.assert_close(disabled, base)


def test_merge_is_refused_with_a_clear_message_and_unload_restores_base():
    model, tokenizer = load_model("tiny-llama")
    batch = tokenizer(["hello"], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
    peft_model = attach(model, {"method": "series", "bottleneck_size": 8, "init": "paper"})
    with pytest.raises(NotImplementedError, match="non-linear and cannot be merged.*unload"):
        peft_model.merge_and_unload()
    unloaded = peft_model.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in unloaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(unloaded(**batch).logits, base)


def test_plain_peft_get_peft_model_accepts_the_registered_config():
    model, _ = load_model("tiny-gpt2")  # Conv1D layers
    config = BottleneckConfig(target_modules=["mlp.c_proj"], bottleneck_size=4, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    assert isinstance(peft_model, PeftModel)
    assert sum(isinstance(m, BottleneckLayer) for m in peft_model.modules()) == 2


@pytest.mark.parametrize("field,value,message", [
    ("bottleneck_size", 0, "bottleneck_size must be a positive integer, got 0"),
    ("non_linearity", "tanhh", "unknown activation 'tanhh'; accepted"),
    ("scaling", "big", "scaling must be a number or 'learned', got 'big'"),
    ("adapter_dropout", 1.5, "adapter_dropout must be in [0, 1), got 1.5"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        BottleneckConfig(target_modules=["down_proj"], **{field: value})


def test_fresh_process_without_registration_fails_and_with_import_loads(tmp_path):
    model, _ = load_model("tiny-llama")
    attach(model, {"method": "series", "bottleneck_size": 4}).save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from peft import PeftConfig
        try:
            PeftConfig.from_pretrained({str(tmp_path)!r})
            print("loaded-without-import")
        except Exception as error:
            print("error:", type(error).__name__, error)
        import llm_adapters.methods
        print(type(PeftConfig.from_pretrained({str(tmp_path)!r})).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}).stdout
    assert "error: KeyError" in out and "BOTTLENECK" in out  # the documented pitfall (README) still holds
    assert out.strip().endswith("BottleneckConfig")


def test_a_learned_scale_saved_as_a_scalar_by_an_earlier_version_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    from llm_adapters.methods import load_adapter, save_adapter

    model, _ = load_model("tiny-llama")
    peft_model = attach(model, {"method": "series", "bottleneck_size": 8, "scaling": "learned"})
    perturb(peft_model)
    peft_model.eval()
    ids = torch.tensor([[5, 17, 99, 3, 250]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    save_adapter(peft_model, tmp_path / "a")
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    scales = [k for k in weights if "adapter_scale" in k]
    assert scales and all(weights[k].shape == (1,) for k in scales)  # 1-D: FSDP2 shards no 0-dim parameter
    save_file({k: v.reshape(()) if k in scales else v for k, v in weights.items()},
              tmp_path / "a" / "adapter_model.safetensors")  # as the earlier version wrote it
    loaded = load_adapter(load_model("tiny-llama")[0], tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
