"""The bottleneck tuner: finds the target Linears and wraps them in BottleneckLayer."""
from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .config import BottleneckConfig
from .layer import BottleneckLayer


class BottleneckModel(BaseTuner):
    """Series and Parallel bottleneck adapters as a PEFT tuner (get_peft_model, save/load, switch, disable, unload).

    There is no default placement: `llm_adapters.methods.attach` resolves one per architecture, or pass
    `target_modules` yourself.
    """

    prefix: str = "adapter_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(
            "bottleneck adapters are non-linear and cannot be merged into the base weights; "
            "use unload() to remove them, disable_adapter() to bypass them, or keep the PeftModel"
        )
