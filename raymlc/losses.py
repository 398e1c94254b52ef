"""Training losses for multi-label tagging with incomplete labels.

Every loss takes raw logits of shape [B, C] and {0, 1} targets of the same shape. An optional ``mask``
(bool or 0/1 float, same shape) marks the entries that count: masked-out entries (mask 0) have no effect on
the value or the gradient, even when their logits or targets are huge, infinite or NaN, because they are
replaced by constants before any arithmetic touches them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMOID_F1_EPS = 1e-8
"""Added to the soft-F1 denominator so labels with no soft tp, fp or fn give F1 = 0 instead of 0/0."""


def _mask_inputs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes; return (logits, targets, bool mask) with masked entries set to 0."""
    if targets.shape != logits.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}")
    targets = targets.to(logits.dtype)
    if mask is None:
        return logits, targets, torch.ones_like(logits, dtype=torch.bool)
    if mask.shape != logits.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logits shape {tuple(logits.shape)}")
    keep = mask.to(device=logits.device, dtype=torch.bool)
    zero = logits.new_zeros(())
    return torch.where(keep, logits, zero), torch.where(keep, targets, zero), keep


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the unmasked entries; 0 when every entry is masked."""
    logits, targets, keep = _mask_inputs(logits, targets, mask)
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    total = torch.where(keep, per_entry, per_entry.new_zeros(())).sum()
    return total / keep.sum().clamp(min=1)


def sigmoid_f1(
    logits: torch.Tensor,
    targets: torch.Tensor,
    beta: float = 1.0,
    eta: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid-F1 loss: 1 − mean over labels of the soft F1 (sums over the batch dimension 0).

    With S = 1 / (1 + exp(−beta · (logits + eta))), applied once to the logits, per label
    tp = Σ S·y, fp = Σ S·(1 − y), fn = Σ (1 − S)·y over unmasked entries, and
    F1 = 2·tp / (2·tp + fp + fn + SIGMOID_F1_EPS).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    logits, targets, keep = _mask_inputs(logits, targets, mask)
    weight = keep.to(logits.dtype)
    soft = torch.sigmoid(beta * (logits + eta)) * weight
    targets = targets * weight
    tp = (soft * targets).sum(dim=0)
    fp = (soft * (1 - targets)).sum(dim=0)
    fn = ((1 - soft) * targets).sum(dim=0)
    f1 = 2 * tp / (2 * tp + fp + fn + SIGMOID_F1_EPS)
    return 1 - f1.mean()
