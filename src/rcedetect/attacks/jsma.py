"""JSMA, the Jacobian-based saliency map attack (Papernot et al. 2016b; section 2.3 of Pang et al. 2018).

Two variants, chosen by `mode`:

* `mode="single"` (default): the greedy single-feature map the authors ran, following their
  P2333/Reverse-Cross-Entropy `attacks/jsma.py` (`_jsma_impl`, called from `test_adv.py` with
  `pair=False, epochs=100, eps=<the eps of the sweep>`) and the paper's section 2.3 ("perturbs one
  feature by a constant offset in each iteration step"). Each iteration computes, for every feature i
  that can still move (x_i < 1 for theta > 0), alpha_i = dF_t/dx_i and beta_i = sum_{j != t} dF_j/dx_i,
  picks the feature maximising alpha_i * |beta_i| among those with alpha_i >= 0 and beta_i <= 0 (if none
  qualifies: the one maximising alpha_i - beta_i among all movable features; ties: the lowest index) and
  adds `theta` to it, clipped to the box. The movable set is recomputed from x every iteration, so a
  feature may be chosen again until it saturates (reaches the box bound): with theta < 1 one pixel can
  take several steps. At most `max_iters` iterations (authors: 100), hence at most `max_iters` changed
  features (appendix B.2: "at most 100 pixels"). The authors use theta > 0 only; theta < 0 is the
  mirror image here (features decrease to 0, alpha <= 0 and beta >= 0 admissible).
* `mode="pair"`: the pairwise map of Papernot et al.'s Algorithm 3, described below.

Targets: the caller's. The authors attack argmin F(x) (the least likely class) when no target is
given (`test_adv.py`, `adv_craft_func`); `least_likely_class` computes it.

Pairwise variant. Each iteration computes, for every feature i still in the search domain,
alpha_i = dF_t/dx_i and beta_i = sum_{j != t} dF_j/dx_i, picks the *pair* (p, q) maximising
(alpha_p + alpha_q) * |beta_p + beta_q| subject to alpha_p + alpha_q > 0 and beta_p + beta_q < 0
(Papernot et al.'s Algorithm 3, the pairwise form of the paper's map S(X, t)), moves both features by
`theta` (+1: to the top of the box) and removes them from the domain. It stops per example when the
model predicts `target`, when no admissible pair is left, after `max_iters` iterations or when
floor(gamma * d / 2) iterations have changed a fraction `gamma` of the d features, whichever first.
Distance (both variants): L0 (number of changed features). Defaults: mode="single", theta=1.0,
max_iters=100, gamma=None (no cap).

F is the softmax output (`output="probs"`, the paper's F(X) and the authors' choice) or the logits
(`output="logits"`, Papernot et al.'s original / "JSMA-Z" of Carlini & Wagner 2017).
The search domain starts as the features that can still move in theta's direction (x < 1 for
theta > 0), as in cleverhans and the authors' code.

Batched: one forward pass and the vector-Jacobian products for a whole batch per iteration (the
target row and the sum of the other rows of the Jacobian: two backward passes, not L). For softmax
outputs sum_j F_j = 1, so beta = -alpha exactly and one backward pass suffices. Examples that finish
leave the working batch (in both variants). The best pair is found without an n x d x d pair tensor: exactly over the
top-k features by alpha and by -beta, with a bound proving that no pair outside the candidates scores
higher; only examples where the bound fails are searched with more candidates, up to all d, in
chunks of bounded memory. This is what makes 3x32x32 inputs cheap (d = 3072: a full pair tensor is
9.4M entries per image).

`gamma` (optional) caps the fraction of the d features an example may change: floor(gamma * d)
single-feature iterations or floor(gamma * d / 2) pair iterations. The authors' single-feature runs
have no such cap (only the 100 iterations); Papernot et al. use gamma = 0.1 with pairs.
"""

import torch

from ..errors import InputError
from .result import AttackResult, check_images, check_labels, check_positive, eval_mode, goal_reached, num_classes_of, predict

# name -> (map logits to F, whether sum_j F_j is constant so that beta = -alpha exactly)
OUTPUTS = {
    "probs": (lambda logits: logits.softmax(dim=1), True),
    "logits": (lambda logits: logits, False),
}
CANDIDATES = 32  # top-k features per criterion in the first, cheap, exact-with-certificate pair search
PAIR_CHUNK_ELEMENTS = 1 << 24  # bound on m * K * K for one chunk of the pair search (64 MiB of float32)


def _pair_search(a: torch.Tensor, b: torch.Tensor, ok: torch.Tensor, idx: torch.Tensor):
    """Best admissible pair among K candidate features per row. a, b, ok, idx: (m, K).

    Score (a_p + a_q) * (b_p + b_q) where both sums are > 0, p != q, both in the domain (`ok`).
    Returns (score (m,), -1 where no pair is admissible; p (m,); q (m,)) as feature indices.
    """
    m, k = a.shape
    scores, ps, qs = [], [], []
    rows = max(1, PAIR_CHUNK_ELEMENTS // (k * k))
    for s in range(0, m, rows):
        sa, sb, sok, sidx = a[s:s + rows], b[s:s + rows], ok[s:s + rows], idx[s:s + rows]
        pa = sa[:, :, None] + sa[:, None, :]
        pb = sb[:, :, None] + sb[:, None, :]
        valid = (pa > 0) & (pb > 0) & sok[:, :, None] & sok[:, None, :]
        valid &= sidx[:, :, None] != sidx[:, None, :]  # candidates may repeat a feature: no (p, p) pairs
        score = torch.where(valid, pa * pb, torch.full_like(pa, -1.0)).flatten(1)
        best, flat = score.max(dim=1)
        scores.append(best)
        ps.append(sidx.gather(1, (flat // k)[:, None])[:, 0])
        qs.append(sidx.gather(1, (flat % k)[:, None])[:, 0])
    return torch.cat(scores), torch.cat(ps), torch.cat(qs)


def best_pairs(a: torch.Tensor, b: torch.Tensor, domain: torch.Tensor, k: int = CANDIDATES):
    """argmax over pairs p != q in `domain` of (a_p + a_q)(b_p + b_q) with both sums > 0. a, b: (n, d).

    Exact: candidates are the top-k features by a and by b; a pair (r, q) containing any other feature
    r has a_r <= a_(k) and b_r <= b_(k) (the k-th largest), so its score is at most
    max_q (a_(k) + a_q)+ (b_(k) + b_q)+, an O(d) bound per row. Rows whose best candidate pair does not
    reach that bound are searched again with 8x more candidates (finally all d). Returns (valid, p, q).
    """
    n, d = a.shape
    neg = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    a_m, b_m = torch.where(domain, a, neg), torch.where(domain, b, neg)
    score = torch.full((n,), -1.0, dtype=a.dtype, device=a.device)
    p = torch.zeros(n, dtype=torch.long, device=a.device)
    q = torch.zeros_like(p)
    todo = torch.arange(n, device=a.device)
    while todo.numel():
        ta, tb, tdom = a_m[todo], b_m[todo], domain[todo]
        if k >= d:
            cand = torch.arange(d, device=a.device).expand(todo.numel(), d)
        else:
            top_a, top_b = ta.topk(k, dim=1), tb.topk(k, dim=1)
            cand = torch.cat([top_a.indices, top_b.indices], dim=1)
        s, sp, sq = _pair_search(a[todo].gather(1, cand), b[todo].gather(1, cand), tdom.gather(1, cand), cand)
        score[todo], p[todo], q[todo] = s, sp, sq
        if k >= d:
            break
        # Any pair (r, q) with r outside the candidates scores at most (a_(k) + a_q)+ (b_(k) + b_q)+.
        partner = ((top_a.values[:, -1:] + ta).clamp(min=0) * (top_b.values[:, -1:] + tb).clamp(min=0))
        bound = torch.nan_to_num(partner, nan=0.0, posinf=0.0).max(dim=1).values  # -inf entries: not in domain
        todo = todo[bound > s.clamp(min=0)]
        k *= 8
    return score > 0, p, q


def best_single(a: torch.Tensor, b: torch.Tensor, movable: torch.Tensor) -> torch.Tensor:
    """The single-feature choice of the authors' `_jsma_impl`, per row. a, b, movable: (n, d).

    argmax of a * |b| over movable features with a >= 0 and b <= 0; rows where no feature qualifies:
    argmax of a - b over the movable features. Ties go to the lowest index. Returns p (n,).
    """
    neg = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    admissible = movable & (a >= 0) & (b <= 0)
    fallback = ~admissible.any(dim=1, keepdim=True)
    score = torch.where(fallback, torch.where(movable, a - b, neg), torch.where(admissible, a * b.abs(), neg))
    return score.argmax(dim=1)


MODES = ("single", "pair")


def jsma(model, x: torch.Tensor, target: torch.Tensor, *, theta: float = 1.0, gamma=None,
         max_iters: int = 100, output: str = "probs", mode: str = "single", progress: bool = False) -> AttackResult:
    """JSMA on images `x` (N, C, H, W) in [0, 1] towards classes `target` (N,): the authors' greedy
    single-feature map (`mode="single"`) or Papernot et al.'s pairwise map (`mode="pair"`).

    Returns AttackResult(x_adv, success); `success` = the model classifies x_adv as `target`.
    """
    check_images(x)
    if not isinstance(theta, (int, float)) or theta == 0:
        raise InputError(f"theta must be a non-zero number (+1 increases features to the top of the box), got {theta!r}")
    if gamma is not None and not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise InputError(f"gamma is the largest fraction of features JSMA may change, in (0, 1] or None; got {gamma!r}")
    if mode not in MODES:
        raise InputError(f"mode must be one of {list(MODES)} (one feature or a pair per iteration), got {mode!r}")
    check_positive(max_iters, "max_iters", allow_zero=True)
    try:
        to_output, probs_sum_to_one = OUTPUTS[output]
    except KeyError:
        raise InputError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}") from None
    n, shape = x.shape[0], x.shape[1:]
    d = x[0].numel()
    with eval_mode(model):
        check_labels(target, n, "target", num_classes_of(model, x))
        per_iter = 1 if mode == "single" else 2
        iters = int(max_iters) if gamma is None else min(int(max_iters), int(d * gamma / per_iter))
        x_adv = x.detach().flatten(1).clone()
        domain = x_adv < 1.0 if theta > 0 else x_adv > 0.0
        sign = 1.0 if theta > 0 else -1.0
        active = torch.arange(n, device=x.device)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=iters, desc="jsma", leave=False)
        for _ in range(iters):
            xa = x_adv[active].view(-1, *shape).requires_grad_(True)
            out = to_output(model(xa))
            t = target[active]
            going = ~goal_reached(out.detach().argmax(1), t, targeted=True)
            going &= domain[active].sum(1) >= per_iter
            if not going.all():
                # Finished examples leave the working batch; the backward below skips their rows.
                active, out, t = active[going], out[going], t[going]
                if active.numel() == 0:
                    break
            target_out = out.gather(1, t[:, None]).sum()
            if probs_sum_to_one:
                (alpha,) = torch.autograd.grad(target_out, xa)
                alpha = alpha[going].flatten(1)
                beta = -alpha  # sum_j F_j = 1, so sum_{j != t} dF_j/dx = -dF_t/dx exactly
            else:
                (alpha,) = torch.autograd.grad(target_out, xa, retain_graph=True)
                (total,) = torch.autograd.grad(out.sum(), xa)
                alpha, beta = alpha[going].flatten(1), (total - alpha)[going].flatten(1)
            if mode == "single":
                p = best_single(sign * alpha, sign * beta, domain[active])
                x_adv[active, p] = (x_adv[active, p] + theta).clamp(0.0, 1.0)
                # A feature stays movable until it saturates: the authors recompute the mask from x.
                domain[active, p] = x_adv[active, p] < 1.0 if theta > 0 else x_adv[active, p] > 0.0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(working=active.numel())
                continue
            # Increasing (theta > 0) needs alpha > 0 and beta < 0; decreasing the mirror image.
            valid, p, q = best_pairs(sign * alpha, -sign * beta, domain[active])
            rows = active[valid]
            for feature in (p[valid], q[valid]):
                x_adv[rows, feature] = (x_adv[rows, feature] + theta).clamp(0.0, 1.0)
                domain[rows, feature] = False
            active = rows  # no admissible pair left: the attack cannot move this example any further
            if bar is not None:
                bar.update(1)
                bar.set_postfix(working=active.numel())
            if active.numel() == 0:
                break
        if bar is not None:
            bar.close()
        x_adv = x_adv.view(n, *shape)
        success = goal_reached(predict(model, x_adv), target, targeted=True)
    return AttackResult(x_adv, success)
