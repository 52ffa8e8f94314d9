"""Small pieces several test files share: moving adapters off their identity start, teaching a tiny model a
script, one optimiser step."""
from __future__ import annotations

from typing import Any

import torch


def perturb(model: Any, scale: float = 0.5, seed: int = 0) -> None:
    """Move every trainable weight off its initial value: LoRA B, bottleneck up and IA3 vectors start at the
    identity, so a test on an untouched adapter would be a test of the base model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def memorise(model: Any, tokenizer: Any, texts: list[str], steps: int, lr: float = 3e-3) -> float:
    """Train every weight of `model` on `texts` (right-padded, loss on every real token); returns the last loss."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "left"
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()


def one_step(peft_model: Any, batch: dict[str, torch.Tensor], lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits before, logits after) one AdamW step on the trainable weights, in eval mode both times."""
    peft_model.eval()
    with torch.no_grad():
        before = peft_model(**batch).logits.clone()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        after = peft_model(**batch).logits
    return before, after
