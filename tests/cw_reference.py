"""The C&W-L2 engine as it was before the abort rules (commit dd1350d, src/rcedetect/attacks/cw.py
verbatim below the imports), kept as the reference the changed engine must reproduce where its
algorithm did not change (tests/test_cw_engine.py). Not part of the package."""

from typing import NamedTuple

import torch

from rcedetect.attacks.result import AttackResult, check_images, check_labels, check_positive, eval_mode, goal_reached, num_classes_of, predict  # noqa: F401

TANH_SCALE = 0.999999  # keep arctanh finite at the box edges, as in Carlini's code
ABORT_TOLERANCE = 0.9999  # an example aborts when loss > 0.9999 * loss at the previous check
CONST_UPPER = 1e10
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class CWOutput(NamedTuple):
    """Result of `cw_l2_search`. x_adv (N, C, H, W): best successful example, x_start where none;
    found (N,) bool; l2 (N,): ||x_adv - x_ref||_2, inf where none; const (N,): smallest successful c
    (inf where none)."""

    x_adv: torch.Tensor
    found: torch.Tensor
    l2: torch.Tensor
    const: torch.Tensor


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2.0 * x - 1.0) * TANH_SCALE)


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1.0) * 0.5


def logit_margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """How far the goal is met: Z_t - max_{i != t} Z_i (targeted) or max_{i != y} Z_i - Z_y (untargeted)."""
    real = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    return real - other if targeted else other - real


def cw_l2_search(model, x: torch.Tensor, labels: torch.Tensor, *, targeted: bool, kappa: float = 0.0,
                 binary_search_steps: int = 9, max_iters: int = 10000, lr: float = 1e-2,
                 initial_const: float = 1e-3, abort_early: bool = True, x_start=None, x_ref=None,
                 extra_loss=None, extra_success=None, scale_extra_by_const: bool = True,
                 progress: bool = False) -> CWOutput:
    """The C&W-L2 optimisation core (see the module docstring); the caller validates inputs and puts
    the model in eval mode. `labels` are targets if `targeted`, else the true labels."""
    x = x.detach()
    x_ref = x if x_ref is None else x_ref.detach()
    x_start = x if x_start is None else x_start.detach()
    n, shape = x.shape[0], x.shape[1:]
    device, dtype = x.device, x.dtype
    need_features = extra_loss is not None or extra_success is not None
    if need_features and hasattr(model, "forward_features"):
        forward = model.forward_features
    else:
        def forward(inp):
            return model(inp), None

    B = int(binary_search_steps)
    const = torch.full((n,), float(initial_const), device=device, dtype=dtype)
    lower = torch.zeros(n, device=device, dtype=dtype)
    upper = torch.full((n,), float("inf"), device=device, dtype=dtype)
    best_l2sq = torch.full((n,), float("inf"), device=device, dtype=dtype)
    best_x = x_start.clone()
    w_start = to_tanh_space(x_start)
    check_every = max(1, max_iters // 10)
    b1, b2 = ADAM_BETAS
    inf = torch.tensor(float("inf"), device=device, dtype=dtype)

    # The working batch: one row per example still searching, each at its *own* binary-search step
    # and iteration. A row whose step ends (max_iters reached or early abort) updates its example's
    # binary search and restarts in place with the next c, so the batch stays full until examples run
    # out of steps; each example follows exactly the trajectory it would follow alone.
    idx = torch.arange(n, device=device)
    bstep = torch.zeros(n, dtype=torch.long, device=device)  # binary step of each example
    w = w_start.clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    it = torch.zeros(n, dtype=torch.long, device=device)  # iteration within the row's current step
    c = const.clone()
    prev = torch.full((n,), float("inf"), device=device, dtype=dtype)
    found = torch.zeros(n, dtype=torch.bool, device=device)  # success seen in the row's current step
    lab, ref = labels, x_ref
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n * B, desc="c&w binary steps", unit="step", leave=False)
    while idx.numel():
        w.requires_grad_(True)
        x_adv = from_tanh_space(w)
        logits, features = forward(x_adv)
        l2sq = (x_adv - ref).square().flatten(1).sum(1)
        margin = logit_margin(logits, lab, targeted)
        f = (kappa - margin).clamp(min=0.0)  # = max(-margin, -kappa) + kappa, same gradient
        loss = l2sq + c * f
        if extra_loss is not None:
            extra = extra_loss(x_adv, logits, features, idx)
            loss = loss + (c * extra if scale_extra_by_const else extra)
        (grad,) = torch.autograd.grad(loss.sum(), w)
        w = w.detach()
        with torch.no_grad():
            loss, x_adv, l2sq, margin = loss.detach(), x_adv.detach(), l2sq.detach(), margin.detach()
            # Carlini's early abort, per example: every check_every iterations of a step, stop the
            # step if the loss has not improved by 0.01 % since the last check.
            stalled = torch.zeros_like(found)
            if abort_early:
                check = it % check_every == 0
                stalled = check & (loss > prev * ABORT_TOLERANCE)
                prev = torch.where(check & ~stalled, loss, prev)
            # Success of the point just evaluated (before the Adam step), as in Carlini's code; an
            # example that aborts at this check is not recorded, also as there.
            ok = (margin > kappa) & ~stalled
            if extra_success is not None:
                ok &= extra_success(x_adv, logits.detach(), None if features is None else features.detach(), idx)
            better = ok & (l2sq < best_l2sq[idx])
            rows = idx[better]
            best_l2sq[rows] = l2sq[better]
            best_x[rows] = x_adv[better]
            found |= ok
            # Adam (bias-corrected, as torch.optim.Adam / foolbox), per row: rows have their own step t.
            t = (it + 1).to(dtype)
            shape = (-1,) + (1,) * (w.dim() - 1)
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            m_hat = m / (1 - b1 ** t).view(shape)
            v_hat = v / (1 - b2 ** t).view(shape)
            w = w - lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
            it += 1
            ended = stalled | (it >= max_iters)
            if ended.any():
                # Modified binary search (Carlini & Wagner) for the examples whose step ended:
                # success -> bisect down; failure -> bisect up, or x10 while no success was ever seen.
                e, hit, ce = idx[ended], found[ended], c[ended]
                upper[e] = torch.where(hit, torch.minimum(upper[e], ce), upper[e])
                lower[e] = torch.where(hit, lower[e], torch.maximum(lower[e], ce))
                const[e] = torch.where(upper[e] < 1e9, (lower[e] + upper[e]) / 2, ce * 10)
                bstep[e] += 1
                if B >= 10:  # Carlini: the last step repeats the search with the best c found
                    last = e[bstep[e] == B - 1]
                    const[last] = torch.minimum(upper[last], torch.full_like(upper[last], CONST_UPPER))
                if bar is not None:
                    bar.update(int(ended.sum()))
                    bar.set_postfix(success=f"{(best_l2sq < inf).float().mean().item():.0%}", working=idx.numel())
                # Rows with steps left restart in place; rows without leave the working batch.
                restart = ended & (bstep[idx] < B)
                if restart.any():
                    r = idx[restart]
                    w[restart] = w_start[r]
                    m[restart] = 0.0
                    v[restart] = 0.0
                    it[restart] = 0
                    prev[restart] = float("inf")
                    found[restart] = False
                    c[restart] = const[r]
                keep = ~ended | restart
                if not keep.all():
                    idx, w, m, v, it, c, prev, found = (t_[keep] for t_ in (idx, w, m, v, it, c, prev, found))
                    lab, ref = lab[keep], ref[keep]
    if bar is not None:
        bar.close()
    found_any = best_l2sq < inf
    return CWOutput(best_x, found_any, best_l2sq.sqrt(), torch.where(found_any, upper, inf.expand_as(upper)))


