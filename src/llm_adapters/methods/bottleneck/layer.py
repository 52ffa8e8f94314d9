"""The bottleneck adapter layer: wraps one Linear (or GPT-2 Conv1D) and adds one adapter per name."""
from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from .config import BottleneckConfig


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """A frozen base layer plus bottleneck adapters; only the active ones run (PEFT's forward order)."""

    adapter_layer_names = ("adapter_down", "adapter_up", "adapter_scale")
    other_param_names = ("adapter_act", "adapter_dropout", "adapter_variant", "adapter_side", "adapter_fixed_scale")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, **kwargs: Any) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = _features(base_layer)
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_scale = nn.ParameterDict()  # only adapters with scaling="learned" have an entry
        self.adapter_act: dict[str, nn.Module] = {}
        self.adapter_dropout = nn.ModuleDict()
        self.adapter_variant: dict[str, str] = {}
        self.adapter_side: dict[str, str] = {}
        self.adapter_fixed_scale: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self._register_load_state_dict_pre_hook(_scalar_scales)
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        width_in, width_out = self._adapter_widths(config)
        # Adapter weights stay fp32 whatever the base dtype (forward casts in and out), on the base's device
        # (the meta device for parameter counting).
        where = dict(dtype=torch.float32, device=self.get_base_layer().weight.device)
        self.adapter_down[adapter_name] = nn.Linear(width_in, config.bottleneck_size, bias=False, **where)
        self.adapter_up[adapter_name] = nn.Linear(config.bottleneck_size, width_out, bias=False, **where)
        self.adapter_act[adapter_name] = ACT2FN[config.non_linearity]
        self.adapter_dropout[adapter_name] = (
            nn.Dropout(config.adapter_dropout) if config.adapter_dropout > 0 else nn.Identity()
        )
        self.adapter_variant[adapter_name] = config.variant
        self.adapter_side[adapter_name] = config.side
        if config.scaling == "learned":
            # one element, not a scalar: FSDP2 (`fully_shard`) cannot shard 0-dim parameters
            self.adapter_scale[adapter_name] = nn.Parameter(torch.ones(1, dtype=torch.float32))
        else:
            self.adapter_fixed_scale[adapter_name] = float(config.scaling)
        self._init_weights(adapter_name, config.init)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _adapter_widths(self, config: BottleneckConfig) -> tuple[int, int]:
        if config.variant == "parallel":
            return self.in_features, self.out_features
        width = self.out_features if config.side == "output" else self.in_features
        return width, width

    def _init_weights(self, adapter_name: str, init: str) -> None:
        down, up = self.adapter_down[adapter_name].weight, self.adapter_up[adapter_name].weight
        if init == "paper":
            nn.init.normal_(down, std=0.02)
            nn.init.normal_(up, std=0.02)
        else:  # "zeros": A(z) = 0 at the start, so the adapted model equals the base model
            nn.init.kaiming_uniform_(down, a=5**0.5)
            nn.init.zeros_(up)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        # PEFT's version would also cast the adapter to the base dtype; we keep adapters in fp32.
        weight = self.get_base_layer().weight
        for container in (self.adapter_down, self.adapter_up, self.adapter_scale):
            if adapter_name in container:
                container[adapter_name].to(weight.device if device is None else device)

    def scale(self, adapter_name: str) -> torch.Tensor | float:
        if adapter_name in self.adapter_scale:
            return self.adapter_scale[adapter_name]
        return self.adapter_fixed_scale[adapter_name]

    def bottleneck(self, adapter_name: str, z: torch.Tensor) -> torch.Tensor:
        """s * A(z) = s * up(act(down(drop(z)))), computed in fp32 and returned in z's dtype; dropout on the
        adapter's input, as in the original."""
        hidden = self.adapter_down[adapter_name](self.adapter_dropout[adapter_name](z.to(torch.float32)))
        return (self.scale(adapter_name) * self.adapter_up[adapter_name](self.adapter_act[adapter_name](hidden))
                ).to(z.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.adapter_down]
        inputs = x
        for name in active:  # input-side series adapters change what the base layer sees
            if self.adapter_variant[name] == "series" and self.adapter_side[name] == "input":
                inputs = inputs + self.bottleneck(name, inputs)
        result = self.base_layer(inputs, *args, **kwargs)
        for name in active:
            if self.adapter_variant[name] == "parallel":
                result = result + self.bottleneck(name, x)
        for name in active:
            if self.adapter_variant[name] == "series" and self.adapter_side[name] == "output":
                result = result + self.bottleneck(name, result)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "bottleneck adapters are non-linear and cannot be merged into the base weights; "
            "use unload() to remove them, disable_adapter() to bypass them, or keep the PeftModel"
        )

    def unmerge(self) -> None:
        """Nothing is ever merged (see merge)."""

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


def _features(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):  # GPT-2 stores the weight as (in, out)
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(
        f"bottleneck adapters wrap nn.Linear or transformers Conv1D layers, not {type(layer).__name__}"
    )


def _scalar_scales(state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
    """Adapters saved before the learned scale had one element held it as a 0-dim tensor: load them as (1,)."""
    for key, value in list(state_dict.items()):
        if key.startswith(prefix + "adapter_scale.") and value.dim() == 0:
            state_dict[key] = value.reshape(1)
