"""CE and RCE against float64 brute-force formulas, their gradients, and Theorem 2's bounds."""

import numpy as np
import pytest
import torch

from rcedetect.losses import cross_entropy, reverse_cross_entropy, reverse_label


def _brute_rce(logits: np.ndarray, y: np.ndarray) -> float:
    """The paper's definition, literally: train Z_pre = -logits against R_y with CE."""
    n, L = logits.shape
    total = 0.0
    for i in range(n):
        z_pre = -logits[i].astype(np.float64)
        p = np.exp(z_pre - z_pre.max())
        p /= p.sum()
        r = np.full(L, 1.0 / (L - 1))
        r[y[i]] = 0.0
        total += -(r * np.log(p)).sum()
    return total / n


def _brute_ce(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_losses_match_float64_brute_force(scale):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g) * scale
    y = torch.randint(0, 10, (64,), generator=g)
    assert reverse_cross_entropy(logits, y).item() == pytest.approx(_brute_rce(logits.numpy(), y.numpy()), rel=1e-5)
    assert cross_entropy(logits, y).item() == pytest.approx(_brute_ce(logits.numpy(), y.numpy()), rel=1e-5)


def test_reverse_label():
    r = reverse_label(torch.tensor([0, 3]), 4, torch.float64)
    assert torch.equal(r, torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3, 0]], dtype=torch.float64))


def test_rce_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 10, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda z: reverse_cross_entropy(z, y), (logits,))


def test_rce_minimiser_predicts_true_class():
    """Gradient descent on RCE alone drives the *prediction* logits' argmax to the true class."""
    logits = torch.zeros(3, 10, requires_grad=True)
    y = torch.tensor([2, 5, 9])
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        reverse_cross_entropy(logits, y).backward()
        opt.step()
    assert torch.equal(logits.argmax(1), y)
    # and the non-maximal prediction probabilities become (near) uniform, the point of RCE
    p = torch.softmax(logits, 1).detach()
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)
    non_max = p[mask].view(3, 9)
    assert (non_max.max(1).values - non_max.min(1).values).max() < 1e-3


def test_theorem2_bounds_on_trained_toy_model():
    """Train an MLP with RCE on separable blobs; at each training point with RCE error
    alpha = ||S(Z_pre) - R_y||_inf, check both bounds of Theorem 2 numerically."""
    torch.manual_seed(0)
    L, d, n = 4, 2, 400
    centres = torch.tensor([[4.0, 0], [-4, 0], [0, 4], [0, -4]])
    y = torch.arange(L).repeat(n // L)
    x = centres[y] + 0.3 * torch.randn(n, d)
    model = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, L)).double()
    x = x.double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(800):
        opt.zero_grad()
        reverse_cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)                       # prediction logits = -Z_pre
        s_pre = torch.softmax(-logits, 1)      # S(Z_pre), trained towards R_y
        s_pred = torch.softmax(logits, 1)      # S(-Z_pre), the prediction
    alpha = (s_pre - reverse_label(y, L, torch.float64)).abs().max(1).values
    assert alpha.max() < 0.05, "toy model did not reach a small RCE training error"
    one_hot = torch.nn.functional.one_hot(y, L).double()
    bound1 = (s_pred - one_hot).abs().max(1).values
    assert torch.all(bound1 <= alpha * (L - 1) ** 2 + 1e-12)
    mask = ~one_hot.bool()
    non_max = s_pred[mask].view(n, L - 1)
    spread = non_max.max(1).values - non_max.min(1).values
    assert torch.all(spread <= 2 * alpha ** 2 * (L - 1) ** 2 + 1e-12)
    # the second bound is quadratic in alpha: it must be much tighter than the first
    assert spread.max() < bound1.max()
