"""Recomputation (activation checkpointing): keep fewer activations, run parts of the forward twice.

``torch.utils.checkpoint`` runs a module without keeping its intermediate tensors, only its
input; backward runs the module's forward again to get them back. Wrapping the course's GPT:

- ``checkpoint_every(model, k)``: every k-th block is checkpointed on its own (k = 1: all);
- ``checkpoint_segments(model, length)``: consecutive blocks are grouped into segments of
  ``length`` blocks, each checkpointed as one unit, as in Chen et al. 2016's sqrt(n) schedule.

Both change the model in place and return it; weights and results are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from book import checks


class Checkpointed(nn.Module):
    """``module`` run under ``torch.utils.checkpoint`` while training with gradients on."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        if kv_cache is not None:  # recomputation is for training; generation needs no saved activations
            raise ValueError("kv_cache: a checkpointed model does not generate with a KV cache; "
                             "use the model before book.recompute wrapped it")
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.module, x, use_reentrant=False)
        return self.module(x)


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"model must have a ModuleList of blocks (a book.model.GPT), got {type(model).__name__}")
    if any(isinstance(b, Checkpointed) for b in blocks):
        raise ValueError("model's blocks are already checkpointed; build a fresh model")
    return blocks


def checkpoint_every(model: nn.Module, k: int = 1) -> nn.Module:
    """Checkpoint blocks 0, k, 2k, ... of ``model`` (k = 1: every block)."""
    blocks = _blocks(model)
    k = checks.positive_int("k", k)
    model.blocks = nn.ModuleList(Checkpointed(b) if i % k == 0 else b for i, b in enumerate(blocks))
    return model


def checkpoint_segments(model: nn.Module, length: int) -> nn.Module:
    """Group ``model``'s blocks into segments of ``length`` consecutive blocks, each checkpointed."""
    blocks = _blocks(model)
    length = checks.positive_int("length", length)
    model.blocks = nn.ModuleList(Checkpointed(nn.Sequential(*blocks[i:i + length]))
                                 for i in range(0, len(blocks), length))
    return model
