"""Correct batched generation for prompt-learning methods (prefix, prompt tuning, P-tuning).

peft 0.21.2 with transformers 5.2x generates wrongly for these methods: it looks for the KV cache under the old
keyword `past_key_values` while transformers now passes `cache`, so the prefix is dropped while decoding and
virtual tokens are prepended again at every step (BLOOM and OPT crash). Instead of patching PEFT's input
preparation step by step, we hand the base model's own `generate` inputs in which the virtual tokens are already
materialised:

- the sequence is [vt placeholder ids][left padding][prompt], with attention mask [1]*vt + mask, so position ids
  derived from the mask count the virtual tokens first and skip the padding, exactly as for a prompt alone;
- prefix tuning: the prefix K/V go in as a pre-filled cache of length vt, so only the placeholders are "cached"
  (repeated per beam for beam search, which `generate` does not do for a cache it is given);
- prompt tuning / P-tuning: the prompt embeddings go in as `inputs_embeds` for the first step.
The placeholders are cut from the returned sequences, so callers see the usual [prompt][new tokens].
"""
from __future__ import annotations

from typing import Any

import torch
from peft import PeftModelForCausalLM
from peft.utils import PeftType

from llm_adapters.errors import UserError


class PromptLearningForCausalLM(PeftModelForCausalLM):
    """PeftModelForCausalLM whose `generate` is correct for prompt learning in left-padded batches."""

    def generate(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        config = self.active_peft_config
        if not config.is_prompt_learning or self._adapters_disabled:  # PEFT's flag inside disable_adapter()
            return self.get_base_model().generate(*args, **kwargs)
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        if input_ids is None:
            raise UserError("prompt-learning generation needs input_ids")
        attention_mask = kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, vt = input_ids.shape[0], config.num_virtual_tokens
        base = self.get_base_model()
        placeholder = torch.full((batch, vt), _placeholder_id(self), dtype=input_ids.dtype, device=input_ids.device)
        full_ids = torch.cat([placeholder, input_ids], dim=1)
        full_mask = torch.cat([torch.ones_like(placeholder, dtype=attention_mask.dtype), attention_mask], dim=1)
        if config.peft_type == PeftType.PREFIX_TUNING:
            cache = self.get_prompt(batch_size=batch)
            # `generate` repeats the inputs for each beam (row i -> rows i*beams .. i*beams + beams - 1), but not a
            # cache passed in: repeat the prefix the same way.
            beams = kwargs.get("num_beams") or getattr(kwargs.get("generation_config"), "num_beams", None) \
                or base.generation_config.num_beams or 1
            if beams > 1:
                cache.batch_repeat_interleave(beams)
            kwargs["cache"] = cache
        else:
            embeds = base.get_input_embeddings()(input_ids)
            prompts = self.get_prompt(batch_size=batch).to(embeds.dtype)
            kwargs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        output = base.generate(input_ids=full_ids, attention_mask=full_mask, **kwargs)
        if isinstance(output, torch.Tensor):
            return output[:, vt:]
        output.sequences = output.sequences[:, vt:]
        return output


def _placeholder_id(model: PeftModelForCausalLM) -> int:
    # Any id works: the placeholders' embeddings are never used (cache or prompt embeddings replace them).
    config = model.get_base_model().config
    for candidate in (config.pad_token_id, config.eos_token_id, 0):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, list) and candidate:
            return candidate[0]
    return 0


def fix_prompt_learning_generation(model: Any) -> Any:
    """Swap a prompt-learning PeftModelForCausalLM's class for the one with a correct `generate` (in place)."""
    if isinstance(model, PeftModelForCausalLM) and model.active_peft_config.is_prompt_learning:
        model.__class__ = PromptLearningForCausalLM
    return model
