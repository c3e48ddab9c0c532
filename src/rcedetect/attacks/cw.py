"""C&W-L2, the attack of Carlini & Wagner 2017a (section 2.3 of Pang et al. 2018); C&W-hc is kappa=10.

    x* = (tanh(w) + 1) / 2,   minimise_w  ||x* - x||_2^2 + c * f(x*)
    f(x*) = max( max_{i != t} Z(x*)_i - Z(x*)_t, -kappa )            (targeted, towards t)
    f(x*) = max( Z(x*)_y - max_{i != y} Z(x*)_i, -kappa )            (untargeted, away from y)

Z are the model's prediction logits. Adam (lr) runs `max_iters` steps for each of
`binary_search_steps` values of c, found per example by the modified binary search (x10 until a
success, then bisection; with >= 10 steps the last one repeats with the best c). The result is the
successful x* with the smallest L2 over all steps; examples never successful come back unchanged with
success=False. Distance: L2 in [0, 1] pixel units. Defaults are the paper's (appendix B.2): 9 binary
steps x 10 000 iterations, lr 1e-2, c0 = 1e-3, kappa 0 (C&W) or 10 (C&W-hc), early abort on.
The paper's protocol attacks a random target class != y (`random_targets(y, L, seed)`).

Speed (all of it from batching, none from changing the algorithm):
- One forward pass per step: its logits give the loss, the gradient *and* the success bookkeeping.
- Gradients are taken with respect to w only (the weights get none).
- Per-example early abort: every max_iters // 10 iterations of a binary step, an example whose own
  loss has not improved by 0.01 % ends that step (Carlini's check, applied per example instead of to
  the batch's summed loss, which keeps every example running until all of them stall). `abort_rule`
  (`AbortRule`) says which loss is compared: WINDOW (default, `DEFAULT_ABORT_RULE`) the best loss of
  any iterate since the last check, checked every max(max_iters // 10, WINDOW_MIN_CHECK = 50)
  iterations; EXAMPLE the loss at the check, as Carlini and foolbox do. Why WINDOW is the default:
  with a large lr (the quick presets' 0.1) the loss oscillates, and an unlucky iterate at a check ends
  a step that still improves. Measured against foolbox and advertorch on the quick MNIST models over 14
  settings (benchmarks/RESULTS.md, "C&W engine"): WINDOW's median and paired L2 are within 1 % of the
  better peer's in all 14 at equal-or-better success, EXAMPLE's in 8 of 14 (up to +6.4 %), while
  EXAMPLE runs fewer iterations at the quick budgets (0.55-0.64 of the budget against WINDOW's
  0.84-0.89; about the same at the paper-like 9 x 1 000, lr 0.01: 0.76 / 0.77), so it is the faster
  choice where a few % of L2 do not matter (`--abort-rule example`). NONE: every step
  runs max_iters (= abort_early=False). A per-example rule keeps each example's result independent of
  the batch it is in (the reproduction's chunks rely on that); foolbox's and Carlini's summed-loss rule
  does not, so it is not offered.
- Continuous batching: each example runs its own binary search. When its step ends it updates its c
  and restarts in place, so the working batch stays full instead of waiting for the slowest example
  of every step; examples leave the batch when their last step ends. Adam is written out so its
  state (and its bias-correction step count) is per row. Each example follows exactly the trajectory
  it would follow alone (tested), so results do not depend on the batch.

Differences from the authors' code (P2333/Reverse-Cross-Entropy): their C&W runs used only 10
iterations per binary-search step (`max_iterations=10`); we default to the paper's 10 000. The L2 term
is measured from x itself, not from the tanh-reconstruction of x (they differ by ~1e-6).

Reuse (C&W-wb, detector-aware variants): `cw_l2_search` is the optimisation core. It takes
`extra_loss(x_adv, logits, features, idx) -> (n,)` added to f inside the c-weighted term (or outside
it with `scale_extra_by_const=False`) and `extra_success(x_adv, logits, features, idx) -> (n,) bool`
ANDed with the class goal; `idx` are the rows of the full batch in the current working batch (index
per-example state with it). `features` is the model's penultimate output (`forward_features`) when a
callback is given, else None. `x_start` sets where w starts each binary step and `x_ref` where the L2
term is measured from (phase 2 of C&W-wb starts from the phase-1 result).
"""

from typing import NamedTuple

import torch

from ..names import AbortRule
from .result import AttackResult, check_images, check_labels, check_positive, eval_mode, goal_reached, num_classes_of, predict

TANH_SCALE = 0.999999  # keep arctanh finite at the box edges, as in Carlini's code
ABORT_TOLERANCE = 0.9999  # an example aborts when loss > 0.9999 * loss at the previous check
# WINDOW checks at least this many iterations apart: at lr 0.1 the loss of one example swings over tens of
# iterations, so a 10-iteration window (max_iters 100) still ends steps that improve (benchmarks/RESULTS.md,
# "C&W engine": +2.6 % / +5.3 % paired L2 against foolbox at 3 x 100); budgets of >= 500 iterations a step
# (the presets') are unchanged by it.
WINDOW_MIN_CHECK = 50
DEFAULT_ABORT_RULE = AbortRule.WINDOW
CONST_UPPER = 1e10
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def abort_rule_of(abort_early: bool, abort_rule) -> AbortRule:
    """The rule a C&W run applies: `abort_rule` (checked), or NONE when `abort_early` is off."""
    return AbortRule.coerce(abort_rule, "abort rule") if abort_early else AbortRule.NONE


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
                 initial_const: float = 1e-3, abort_early: bool = True, abort_rule=DEFAULT_ABORT_RULE,
                 x_start=None, x_ref=None, extra_loss=None, extra_success=None, scale_extra_by_const: bool = True,
                 progress: bool = False) -> CWOutput:
    """The C&W-L2 optimisation core (see the module docstring); the caller validates inputs and puts
    the model in eval mode. `labels` are targets if `targeted`, else the true labels. `abort_rule`
    (an `AbortRule`) applies when `abort_early`; `abort_early=False` is `AbortRule.NONE`."""
    rule = abort_rule_of(abort_early, abort_rule)
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
    check_every = max(1, max_iters // 10, WINDOW_MIN_CHECK if rule == AbortRule.WINDOW else 1)
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
    prev = torch.full((n,), float("inf"), device=device, dtype=dtype)  # loss (best loss: WINDOW) at the last check
    wmin = torch.full((n,), float("inf"), device=device, dtype=dtype)  # WINDOW: best loss since the last check
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
            if rule != AbortRule.NONE:
                check = it % check_every == 0
                if rule == AbortRule.WINDOW:
                    # The best loss of the window, not the loss at the check: with a large lr the loss
                    # oscillates, and one unlucky iterate at the check ends a step that still improves.
                    wmin = torch.minimum(wmin, loss)
                    stalled = check & (wmin > prev * ABORT_TOLERANCE)
                    prev = torch.where(check & ~stalled, wmin, prev)
                    wmin = torch.where(check, inf, wmin)
                else:
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
                    wmin[restart] = float("inf")
                    found[restart] = False
                    c[restart] = const[r]
                keep = ~ended | restart
                if not keep.all():
                    idx, w, m, v, it, c, prev, wmin, found = (t_[keep] for t_ in (idx, w, m, v, it, c, prev, wmin, found))
                    lab, ref = lab[keep], ref[keep]
    if bar is not None:
        bar.close()
    found_any = best_l2sq < inf
    return CWOutput(best_x, found_any, best_l2sq.sqrt(), torch.where(found_any, upper, inf.expand_as(upper)))


def cw_l2(model, x: torch.Tensor, y=None, *, target=None, kappa: float = 0.0, binary_search_steps: int = 9,
          max_iters: int = 10000, lr: float = 1e-2, initial_const: float = 1e-3, abort_early: bool = True,
          abort_rule=DEFAULT_ABORT_RULE, progress: bool = False) -> AttackResult:
    """C&W-L2 on images `x` (N, C, H, W) in [0, 1].

    Targeted towards `target` (N,) when given (the paper's protocol: `random_targets(y, L, seed)`),
    else untargeted away from `y` (N,), or from the model's predictions when `y` is None too.
    Returns AttackResult(x_adv, success); `success` = a successful example was found (logit margin
    > kappa) and the model's prediction for the returned x_adv meets the goal.
    """
    check_images(x)
    check_positive(kappa, "kappa", allow_zero=True)
    check_positive(binary_search_steps, "binary_search_steps")
    check_positive(max_iters, "max_iters")
    check_positive(lr, "lr")
    check_positive(initial_const, "initial_const")
    abort_rule = AbortRule.coerce(abort_rule, "abort rule")
    n = x.shape[0]
    with eval_mode(model):
        num_classes = num_classes_of(model, x)
        targeted = target is not None
        if targeted:
            check_labels(target, n, "target", num_classes)
            labels = target
        elif y is not None:
            check_labels(y, n, "y", num_classes)
            labels = y
        else:
            labels = predict(model, x)
        out = cw_l2_search(model, x, labels.to(x.device), targeted=targeted, kappa=float(kappa),
                           binary_search_steps=int(binary_search_steps), max_iters=int(max_iters), lr=float(lr),
                           initial_const=float(initial_const), abort_early=abort_early, abort_rule=abort_rule,
                           progress=progress)
        success = out.found & goal_reached(predict(model, out.x_adv), labels.to(x.device), targeted)
    return AttackResult(out.x_adv, success)
