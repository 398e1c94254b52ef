"""Masked BCE and sigmoid-F1 losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raymlc.losses import SIGMOID_F1_EPS, masked_bce, sigmoid_f1


def _batch(seed: int = 0, shape: tuple[int, int] = (8, 5)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    targets = (torch.rand(shape, generator=gen) < 0.4).double()
    mask = torch.rand(shape, generator=gen) < 0.7
    return logits, targets, mask


def _value_and_grad(loss_fn, logits: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.clone().requires_grad_(True)
    value = loss_fn(leaf, *args, **kwargs)
    value.backward()
    return value.detach(), leaf.grad


def _corrupt_masked(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """Copies with every masked entry set to a ±1e4 logit and a flipped target."""
    signs = torch.rand(logits.shape, generator=torch.Generator().manual_seed(99)) < 0.5
    extreme = torch.where(signs, 1e4, -1e4).double()
    return torch.where(mask, logits, extreme), torch.where(mask, targets, 1 - targets)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_masked_bce_matches_torch_on_unmasked(mask_dtype: torch.dtype) -> None:
    logits, targets, mask = _batch()
    expected = torch.nn.BCEWithLogitsLoss()(logits[mask], targets[mask])
    assert masked_bce(logits, targets, mask.to(mask_dtype)).item() == pytest.approx(expected.item(), abs=1e-12)
    assert masked_bce(logits, targets).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets).item(), abs=1e-12
    )


def test_masked_bce_ignores_masked_entries() -> None:
    logits, targets, mask = _batch(1)
    value, grad = _value_and_grad(masked_bce, logits, targets, mask)
    bad_logits, bad_targets = _corrupt_masked(logits, targets, mask)
    bad_value, bad_grad = _value_and_grad(masked_bce, bad_logits, bad_targets, mask)
    assert bad_value.item() == value.item()
    assert torch.equal(bad_grad, grad)
    assert torch.all(grad[~mask] == 0)
    assert torch.isfinite(grad).all()
    # Even inf / NaN in masked slots must not leak.
    nan_logits = torch.where(mask, logits, torch.tensor(float("nan"), dtype=torch.float64))
    nan_value, nan_grad = _value_and_grad(masked_bce, nan_logits, targets, mask)
    assert nan_value.item() == value.item()
    assert torch.equal(nan_grad, grad)


def test_masked_bce_all_masked_is_zero_with_grad() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    loss = masked_bce(logits, torch.ones(3, 4), torch.zeros(3, 4))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_masked_bce_shape_errors() -> None:
    with pytest.raises(ValueError, match="targets shape"):
        masked_bce(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="mask shape"):
        masked_bce(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2))


def _np_sigmoid_f1(z: np.ndarray, y: np.ndarray, beta: float, eta: float, m: np.ndarray | None) -> float:
    """Independent NumPy evaluation of the sigmoid-F1 formula (masked entries dropped from the sums)."""
    m = np.ones_like(z) if m is None else m.astype(float)
    s = 1.0 / (1.0 + np.exp(-beta * (z + eta)))
    tp = np.sum(m * s * y, axis=0)
    fp = np.sum(m * s * (1 - y), axis=0)
    fn = np.sum(m * (1 - s) * y, axis=0)
    return float(1 - np.mean(2 * tp / (2 * tp + fp + fn + SIGMOID_F1_EPS)))


@pytest.mark.parametrize(("beta", "eta", "use_mask"), [(1.0, 0.0, False), (3.0, -0.5, False), (0.5, 1.0, True)])
def test_sigmoid_f1_matches_numpy(beta: float, eta: float, use_mask: bool) -> None:
    logits, targets, mask = _batch(2)
    m = mask if use_mask else None
    expected = _np_sigmoid_f1(logits.numpy(), targets.numpy(), beta, eta, None if m is None else m.numpy())
    assert sigmoid_f1(logits, targets, beta=beta, eta=eta, mask=m).item() == pytest.approx(expected, abs=1e-12)


def test_sigmoid_applied_once() -> None:
    z = torch.tensor([[2.0], [-1.0], [0.5]], dtype=torch.float64)
    y = torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64)
    s = torch.sigmoid(z)
    tp, fp, fn = (s * y).sum(), (s * (1 - y)).sum(), ((1 - s) * y).sum()
    single = 1 - 2 * tp / (2 * tp + fp + fn + SIGMOID_F1_EPS)
    ss = torch.sigmoid(s)
    tp2, fp2, fn2 = (ss * y).sum(), (ss * (1 - y)).sum(), ((1 - ss) * y).sum()
    double = 1 - 2 * tp2 / (2 * tp2 + fp2 + fn2 + SIGMOID_F1_EPS)
    value = sigmoid_f1(z, y).item()
    assert value == pytest.approx(single.item(), abs=1e-12)
    assert abs(value - double.item()) > 1e-3


def test_sigmoid_f1_beta_and_eta() -> None:
    z = torch.tensor([[2.0, -2.0], [-2.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # Correctly signed logits: sharper sigmoid (larger beta) approaches hard F1 = 1, i.e. loss -> 0.
    losses = [sigmoid_f1(z, y, beta=b).item() for b in (0.5, 1.0, 4.0, 20.0)]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 1e-6
    # A positive eta shifts every soft prediction up: more fp, fewer fn; here the net effect is a higher loss.
    assert sigmoid_f1(z, y, eta=3.0).item() > sigmoid_f1(z, y).item()
    assert sigmoid_f1(z, y, eta=-3.0).item() > sigmoid_f1(z, y).item()
    with pytest.raises(ValueError, match="beta"):
        sigmoid_f1(z, y, beta=0.0)


def test_sigmoid_f1_mask_semantics() -> None:
    logits, targets, mask = _batch(3)
    value, grad = _value_and_grad(sigmoid_f1, logits, targets, mask=mask, beta=2.0)
    bad_logits, bad_targets = _corrupt_masked(logits, targets, mask)
    bad_value, bad_grad = _value_and_grad(sigmoid_f1, bad_logits, bad_targets, mask=mask, beta=2.0)
    assert bad_value.item() == value.item()
    assert torch.equal(bad_grad, grad)
    assert torch.all(grad[~mask] == 0)
    # A fully masked label has tp = fp = fn = 0, so its F1 is 0 and it contributes 1 to the mean loss term.
    full = torch.ones_like(mask)
    full[:, 0] = False
    expected = _np_sigmoid_f1(logits.numpy(), targets.numpy(), 1.0, 0.0, full.numpy())
    assert sigmoid_f1(logits, targets, mask=full).item() == pytest.approx(expected, abs=1e-12)


def test_sigmoid_f1_gradient_flows() -> None:
    logits, targets, _ = _batch(4)
    _, grad = _value_and_grad(sigmoid_f1, logits, targets)
    assert torch.isfinite(grad).all()
    # Raising a positive's logit increases its soft tp, so the loss gradient there is negative.
    assert torch.all(grad[targets == 1] < 0)
