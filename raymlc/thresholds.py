"""Adaptive per-label, per-instance decision thresholds (IDF + KNN fusion), leak-free.

A tag l is present iff its logit z_l(x) exceeds

    θ_l(x) = λ·α_l·IDF_l + (1 − λ)·β_l·KNN_l(x) + b_l

with α, β, b learned per label and λ fixed (after arXiv 2505.03118, whose published code computes IDF and
KNN from the evaluated batch's own labels). Here both signals come from the *training* split only, so the
same rule runs at serving time, where no labels exist:

* IDF_l = log(N / (1 + n_l)) over the N training clips, n_l of which carry label l;
* KNN_l(x) = Σ_j w_j·y_jl / Σ_j w_j over the k training clips j of a `MemoryBank` whose embeddings are
  most cosine-similar to x's, with weights w_j = max(cos, 0) (0 when every weight is 0). The taggers'
  embeddings are ReLU outputs, so cosines are >= 0 and the clamp only matters for other backbones; unlike a
  softmax it needs no temperature. When the clips being scored are training clips, each one is excluded
  from its own neighbours (`exclude`).

α, β, b are fitted on a frozen trained tagger (`fit_thresholds`): the KNN signal is then a constant and the
fit is a small full-batch problem. α = β = b = 0 at the start, i.e. the fixed rule z > 0 (p > 0.5). With a
frozen backbone IDF_l is a per-label constant, so α_l·IDF_l and b_l are interchangeable: the IDF-only rule
(λ = 1) is a learned per-label offset, and λ only rescales how fast α and β move in the fused rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raymlc.config import TaggerConfig, ThresholdConfig
from raymlc.data.dataset import SplitData
from raymlc.decision_rules import adaptive
from raymlc.losses import masked_bce
from raymlc.metrics import f1_scores
from raymlc.scoring import predict

QUERY_CHUNK = 1024
"""Queries per block in `MemoryBank.knn_signal` (bounds the [chunk, bank] similarity matrix)."""


@dataclass(frozen=True)
class MemoryBank:
    """Training clips' unit-norm embeddings (float16 [M, E]), labels (uint8 [M, C]) and row ids ([M])."""

    embeddings: np.ndarray
    targets: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if self.embeddings.ndim != 2 or self.targets.ndim != 2 or len(self.targets) != n or len(self.ids) != n:
            raise ValueError("a memory bank needs embeddings [M, E], targets [M, C] and ids [M]")
        if n == 0:
            raise ValueError("a memory bank needs at least one clip")

    @classmethod
    def build(
        cls, embeddings: np.ndarray, targets: np.ndarray, max_size: int | None = None, seed: int = 0
    ) -> MemoryBank:
        """Bank of training clips i (ids = row i); above `max_size` rows, a seeded uniform sample without
        replacement, in row order. Uniform keeps KNN_l an unbiased estimate of the local label share
        (class-balanced sampling would inflate rare labels)."""
        ids = np.arange(len(embeddings))
        if max_size is not None and len(ids) > max_size:
            ids = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_size, replace=False))
        unit = F.normalize(torch.as_tensor(np.asarray(embeddings)[ids], dtype=torch.float32), dim=1)
        return cls(unit.numpy().astype(np.float16), (np.asarray(targets)[ids] > 0).astype(np.uint8), ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_classes(self) -> int:
        return self.targets.shape[1]

    def knn_signal(self, embeddings: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """KNN_l for each query embedding: float32 [N, C] in [0, 1].

        `exclude[i]` is the bank id (training row) that query i must not count as a neighbour (itself);
        ids absent from the bank exclude nothing.
        """
        queries = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float32), dim=1)
        bank = torch.from_numpy(self.embeddings.astype(np.float32))
        labels = torch.from_numpy(self.targets.astype(np.float32))
        ids = torch.from_numpy(self.ids)
        k = min(k, len(self))
        signal = []
        for start in range(0, len(queries), QUERY_CHUNK):
            similarity = queries[start : start + QUERY_CHUNK] @ bank.T
            if exclude is not None:
                own = torch.as_tensor(exclude[start : start + QUERY_CHUNK], dtype=torch.int64)
                similarity = similarity.masked_fill(ids[None, :] == own[:, None], float("-inf"))
            top, index = similarity.topk(k, dim=1)
            weights = top.clamp(min=0)
            total = weights.sum(dim=1, keepdim=True)
            votes = torch.einsum("nk,nkc->nc", weights, labels[index])
            signal.append(torch.where(total > 0, votes / total.clamp(min=1e-30), torch.zeros_like(votes)))
        if not signal:
            return np.zeros((0, self.n_classes), np.float32)
        return torch.cat(signal).numpy()


def idf(train_targets: np.ndarray) -> np.ndarray:
    """IDF_l = log(N / (1 + n_l)) of a training label matrix [N, C] (float32 [C])."""
    targets = np.asarray(train_targets) > 0
    return np.log(len(targets) / (1.0 + targets.sum(axis=0))).astype(np.float32)


class AdaptiveThresholds(nn.Module):
    """θ(knn) = λ·α·IDF + (1 − λ)·β·knn + b, per label; `forward` maps KNN [N, C] to θ [N, C] (logit scale)."""

    def __init__(self, idf: np.ndarray | torch.Tensor, lam: float, k: int) -> None:
        super().__init__()
        idf = torch.as_tensor(idf, dtype=torch.float32)
        self.register_buffer("idf", idf)
        self.alpha = nn.Parameter(torch.zeros_like(idf))
        self.beta = nn.Parameter(torch.zeros_like(idf))
        self.bias = nn.Parameter(torch.zeros_like(idf))
        self.lam = float(lam)
        self.k = int(k)

    def forward(self, knn: torch.Tensor) -> torch.Tensor:
        return self.lam * self.alpha * self.idf + (1 - self.lam) * self.beta * knn + self.bias

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything that defines the rule, as arrays (for the bundle)."""
        return {
            "idf": self.idf.numpy().copy(),
            "alpha": self.alpha.detach().numpy().copy(),
            "beta": self.beta.detach().numpy().copy(),
            "bias": self.bias.detach().numpy().copy(),
            "lam": np.float64(self.lam),
            "k": np.int64(self.k),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AdaptiveThresholds:
        module = cls(arrays["idf"], float(arrays["lam"]), int(arrays["k"]))
        with torch.no_grad():
            for name in ("alpha", "beta", "bias"):
                getattr(module, name).copy_(torch.as_tensor(arrays[name]))
        return module


def thresholds_for(
    module: AdaptiveThresholds, bank: MemoryBank, embeddings: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """θ [N, C] (float32, logit scale) of clips with these embeddings: the one rule of fitting and serving."""
    knn = bank.knn_signal(embeddings, module.k, exclude)
    with torch.no_grad():
        return module(torch.from_numpy(knn)).numpy()


def adaptive_threshold_loss(
    logits: torch.Tensor,
    theta: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    margin: float = 0.5,
    margin_weight: float = 0.1,
) -> torch.Tensor:
    """masked BCE-with-logits(z − θ, y) + margin_weight · mean over unmasked entries of relu(Δ − |z − θ|).

    The margin term pushes θ away from the logits so decisions are not made on a knife's edge. Masked-out
    entries (mask 0) affect neither the value nor the gradient.
    """
    keep = torch.ones_like(logits, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    diff = torch.where(keep, logits - theta, torch.zeros_like(logits))
    near = torch.where(keep, F.relu(margin - diff.abs()), torch.zeros_like(diff)).sum()
    return masked_bce(diff, targets, keep) + margin_weight * near / keep.sum().clamp(min=1)


def fit_thresholds(
    logits: np.ndarray,
    embeddings: np.ndarray,
    targets: np.ndarray,
    bank: MemoryBank,
    train_idf: np.ndarray,
    config: ThresholdConfig,
    exclude: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> AdaptiveThresholds:
    """Fit α, β, b by full-batch Adam (`config.epochs` steps) on a frozen tagger's clip-level logits and
    embeddings with their labels [N, C]; `exclude` as in `MemoryBank.knn_signal` (the clips' own bank ids
    when they are training clips), `mask` marks the entries that count (e.g. 1 − teacher–student flags)."""
    module = AdaptiveThresholds(train_idf, config.lam, config.k)
    z = torch.as_tensor(logits, dtype=torch.float32)
    knn = torch.from_numpy(bank.knn_signal(embeddings, config.k, exclude))
    y = torch.as_tensor(targets, dtype=torch.float32)
    keep = None if mask is None else torch.as_tensor(mask)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        optimizer.zero_grad(set_to_none=True)
        loss = adaptive_threshold_loss(z, module(knn), y, keep, config.margin, config.margin_weight)
        loss.backward()
        optimizer.step()
    return module.eval()


@dataclass
class FittedThresholds:
    """The memory bank of a tagger's training clips, the fitted rule, and the split it was fitted on."""

    bank: MemoryBank
    thresholds: AdaptiveThresholds
    fit_split: str


def fit_tagger_thresholds(
    model: nn.Module, train: SplitData, val: SplitData, config: TaggerConfig, mask: np.ndarray | None = None
) -> FittedThresholds:
    """Build the bank from a frozen tagger's training-clip embeddings and fit α, β, b on
    `config.thresholds.fit_split`.

    "val" uses the validation clips (neighbours from the training bank; falls back to "train" when val is
    empty); "train" uses the training clips, each excluded from its own neighbours, with `mask` (e.g.
    1 − teacher–student flags, [N_train, C]) marking the entries that count.
    """
    settings, batch, window = config.thresholds, config.train.eval_batch_size, config.window_samples
    train_logits, train_embeddings = predict(model, train, batch, window)
    bank = MemoryBank.build(train_embeddings, train.targets, settings.bank_size, settings.bank_seed)
    train_idf = idf(train.targets)
    if settings.fit_split == "val" and len(val):
        logits, embeddings = predict(model, val, batch, window)
        module = fit_thresholds(logits, embeddings, val.targets, bank, train_idf, settings)
        return FittedThresholds(bank, module, "val")
    module = fit_thresholds(
        train_logits,
        train_embeddings,
        train.targets,
        bank,
        train_idf,
        settings,
        exclude=np.arange(len(train)),
        mask=mask,
    )
    return FittedThresholds(bank, module, "train")


def adaptive_f1(
    model: nn.Module, fitted: FittedThresholds, data: SplitData, batch_size: int, window_samples: int | None
) -> dict[str, float]:
    """Micro and macro F1 of the adaptive-threshold decisions on `data`."""
    logits, embeddings = predict(model, data, batch_size, window_samples)
    theta = thresholds_for(fitted.thresholds, fitted.bank, embeddings)
    micro, macro = f1_scores(data.targets, adaptive(logits, theta))
    return {"micro_f1": micro, "macro_f1": macro}
