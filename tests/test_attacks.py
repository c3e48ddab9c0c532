"""Attacks: the box, the eps-ball, determinism, near-100 % success at a large budget and success
monotone in the budget (Carlini et al. 2019's sanity checks), batching independence, the exactness of
JSMA's pair search against a float64 brute force, the registry and the CLI. Cross-checks against
peer libraries are in test_attacks_peers.py."""

import re

import pytest
import torch

from rcedetect.attacks import ATTACKS, AttackResult, bim, cw_l2, cw_l2_search, fgsm, ilcm, jsma, load_adversarial
from rcedetect.attacks import least_likely_class, random_noise, random_targets
from rcedetect.attacks.cw import logit_margin
from rcedetect.attacks.jsma import best_pairs
from rcedetect.errors import InputError
from rcedetect.names import AbortRule, Attack, Norm

N = 16
EPS_TOL = 1e-6


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["ce"]


@pytest.fixture(scope="module")
def batch(mnist_test):
    return mnist_test.float_images(slice(0, N)), mnist_test.labels[:N].clone()


def linf(a, b):
    return (a - b).flatten(1).abs().max(dim=1).values


def in_box(x):
    return bool(((x >= 0) & (x <= 1)).all())


# --------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("bad, message", [
    (torch.rand(1, 28, 28), "(N, C, H, W)"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.rand(2, 1, 28, 28) * 255, "outside the [0, 1]"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), "dtype"),
])
def test_bad_images_give_input_error(model, bad, message):
    y = torch.zeros(bad.shape[0] if bad.dim() == 4 else 1, dtype=torch.long)
    with pytest.raises(InputError, match=re.escape(message)):
        fgsm(model, bad, y, eps=0.1)


def test_bad_labels_give_input_error(model, batch):
    x, y = batch
    with pytest.raises(InputError, match="shape"):
        bim(model, x, y[:3], eps=0.1)
    with pytest.raises(InputError, match="outside"):
        jsma(model, x, torch.full_like(y, 10))


def test_mode_is_restored_and_eval_is_used(model, batch):
    x, y = batch
    expected = fgsm(model, x, y, eps=0.1).x_adv
    model.train()
    try:
        got = fgsm(model, x, y, eps=0.1).x_adv
        assert model.training, "the caller's train mode must be restored"
    finally:
        model.eval()
    # In train mode BN would use batch statistics and give different gradients.
    assert torch.equal(got, expected)


# ------------------------------------------------------------------- box, ball, budget, determinism

LINF_ATTACKS = {
    "fgsm": lambda m, x, y, eps: fgsm(m, x, y, eps=eps),
    "bim": lambda m, x, y, eps: bim(m, x, y, eps=eps, steps=10),
    "ilcm": lambda m, x, y, eps: ilcm(m, x, eps=eps, steps=10),
    "rand": lambda m, x, y, eps: random_noise(x, eps=eps, seed=1, model=m, y=y),
}


@pytest.mark.parametrize("name", sorted(LINF_ATTACKS))
def test_linf_attacks_stay_in_box_and_ball_and_are_deterministic(model, batch, name):
    x, y = batch
    first = LINF_ATTACKS[name](model, x, y, 0.25)
    second = LINF_ATTACKS[name](model, x, y, 0.25)
    assert isinstance(first, AttackResult) and first.success.dtype == torch.bool and first.success.shape == (N,)
    assert in_box(first.x_adv)
    assert linf(first.x_adv, x).max().item() <= 0.25 + EPS_TOL
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.success, second.success)


def test_success_near_100_percent_at_large_budget(model, batch):
    x, y = batch
    assert fgsm(model, x, y, eps=0.4).success.float().mean() >= 0.9
    assert bim(model, x, y, eps=0.3).success.all()
    # Targeted at the least-likely class: a harder goal for 10 steps.
    assert ilcm(model, x, eps=0.4).success.float().mean() >= 0.75


def test_success_is_monotone_in_the_budget(model, batch):
    x, y = batch
    for attack in (lambda e: bim(model, x, y, eps=e), lambda e: ilcm(model, x, eps=e)):
        rates = [attack(e).success.float().mean().item() for e in (0.02, 0.1, 0.3)]
        assert rates == sorted(rates), rates
        assert rates[0] < rates[-1]


def test_bim_early_stop_freezes_successful_examples_only(model, batch):
    x, y = batch
    full = bim(model, x, y, eps=0.1, steps=10)
    stopped = bim(model, x, y, eps=0.1, steps=10, early_stop=True)
    # Each example follows the same trajectory until it is frozen, and it is frozen only once
    # misclassified: so it either matches the full run or is a success.
    differs = (stopped.x_adv != full.x_adv).flatten(1).any(1)
    assert stopped.success[differs].all()
    assert (stopped.success | ~full.success).all()
    assert linf(stopped.x_adv, x).max() <= 0.1 + EPS_TOL


def test_random_noise_and_targets_are_seeded(batch):
    x, y = batch
    a, b, c = (random_noise(x, eps=0.1, seed=s).x_adv for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert in_box(a) and linf(a, x).max() <= 0.1 + EPS_TOL
    noise = (a - x)[(x > 0.1) & (x < 0.9)]  # away from the clipped edges the noise is U(-eps, eps)
    assert noise.abs().max() <= 0.1 and abs(noise.mean().item()) < 0.01 and noise.std().item() > 0.05
    many = torch.arange(10).repeat(200)
    t1, t2 = random_targets(many, 10, seed=5), random_targets(many, 10, seed=5)
    assert torch.equal(t1, t2) and not (t1 == many).any()
    assert set(t1[many == 0].tolist()) == set(range(1, 10))


# --------------------------------------------------------------------------------------------- JSMA

def brute_force_best_score(a, b, domain):
    a, b = a.double(), b.double()
    pa, pb = a[:, None] + a[None, :], b[:, None] + b[None, :]
    ok = (pa > 0) & (pb > 0) & domain[:, None] & domain[None, :]
    ok.fill_diagonal_(False)
    return torch.where(ok, pa * pb, torch.tensor(-1.0, dtype=torch.float64)).max().item()


@pytest.mark.parametrize("k", [2, 32])
def test_best_pairs_is_exact_against_brute_force(k):
    gen = torch.Generator().manual_seed(0)
    n, d = 24, 60
    a = torch.randn(n, d, generator=gen)
    b = 0.5 * torch.randn(n, d, generator=gen) - 0.5 * a  # correlated, like alpha and -beta
    b[:4] = -a[:4].abs() - 0.1  # rows with no admissible pair
    domain = torch.rand(n, d, generator=gen) > 0.3
    a, b = a.double(), b.double()
    valid, p, q = best_pairs(a, b, domain, k=k)
    for i in range(n):
        best = brute_force_best_score(a[i], b[i], domain[i])
        assert bool(valid[i]) == (best > 0)
        if best > 0:
            assert p[i] != q[i] and domain[i, p[i]] and domain[i, q[i]]
            got = ((a[i, p[i]] + a[i, q[i]]) * (b[i, p[i]] + b[i, q[i]])).item()
            assert got == pytest.approx(best, rel=1e-9)


def test_best_pairs_chunked_full_search_is_exact(monkeypatch):
    """Force the fallback to all d features and tiny chunks: the bounded-memory path must stay exact."""
    import sys

    jsma_module = sys.modules["rcedetect.attacks.jsma"]
    monkeypatch.setattr(jsma_module, "PAIR_CHUNK_ELEMENTS", 50)
    gen = torch.Generator().manual_seed(1)
    n, d = 6, 40
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = torch.randn(n, d, generator=gen, dtype=torch.float64)
    domain = torch.ones(n, d, dtype=torch.bool)
    valid, p, q = best_pairs(a, b, domain, k=1)  # k=1 candidates: the certificate fails, the search widens
    for i in range(n):
        best = brute_force_best_score(a[i], b[i], domain[i])
        assert ((a[i, p[i]] + a[i, q[i]]) * (b[i, p[i]] + b[i, q[i]])).item() == pytest.approx(best, rel=1e-12)


def test_jsma_runs_on_cifar_sized_inputs():
    from rcedetect.models import resnet

    torch.manual_seed(0)
    net = resnet(depth=8, in_channels=3).eval()
    x = torch.rand(3, 3, 32, 32)
    result = jsma(net, x, torch.tensor([1, 2, 3]), max_iters=3, output="logits")
    changed = (result.x_adv != x).flatten(1).sum(1)
    assert in_box(result.x_adv) and (changed <= 6).all()


def test_jsma_changes_few_features_upwards_and_succeeds(model, batch):
    x, y = batch
    target = random_targets(y, 10, seed=0)
    result = jsma(model, x, target, gamma=0.2)
    changed = (result.x_adv != x).flatten(1).sum(1)
    assert in_box(result.x_adv) and (result.x_adv >= x).all()  # theta = +1 only increases features
    assert changed.max() <= int(784 * 0.2 / 2) * 2
    assert result.success.float().mean() >= 0.8
    assert torch.equal(result.success, model(result.x_adv).argmax(1) == target)
    # The budget is a cap: more features allowed never loses an example at this size.
    assert jsma(model, x, target, gamma=0.02).success.sum() <= result.success.sum()


@pytest.mark.parametrize("output", ["probs", "logits"])
def test_jsma_batch_equals_one_by_one(model, batch, output):
    x, y = batch
    x, target = x[:4], random_targets(y[:4], 10, seed=1)
    together = jsma(model, x, target, max_iters=8, output=output)
    alone = [jsma(model, x[i:i + 1], target[i:i + 1], max_iters=8, output=output) for i in range(4)]
    assert torch.equal(together.x_adv, torch.cat([r.x_adv for r in alone]))


# ---------------------------------------------------------------------------------------------- C&W

CW_FAST = dict(binary_search_steps=3, max_iters=40, lr=0.2, initial_const=1.0)


def test_cw_targeted_succeeds_with_small_l2_and_stays_in_box(model, batch):
    x, y = batch
    x, y = x[:6], y[:6]
    target = random_targets(y, 10, seed=0)
    result = cw_l2(model, x, target=target, **CW_FAST)
    assert in_box(result.x_adv)
    assert result.success.float().mean() >= 0.8
    assert torch.equal(result.success, result.success & (model(result.x_adv).argmax(1) == target))
    l2 = (result.x_adv - x).flatten(1).norm(dim=1)
    assert l2[result.success].median() < 4.0 and torch.equal(result.x_adv[~result.success], x[~result.success])
    # More optimisation (binary steps) never finds fewer examples: a Carlini et al. 2019 check.
    fewer = cw_l2(model, x, target=target, **{**CW_FAST, "binary_search_steps": 1})
    assert fewer.success.sum() <= result.success.sum()


def test_cw_high_confidence_reaches_the_margin(model, batch):
    x, y = batch
    x, y = x[8:11], y[8:11]
    result = cw_l2(model, x, y, kappa=5.0, **CW_FAST)  # untargeted
    margins = logit_margin(model(result.x_adv).detach(), y, targeted=False)
    assert result.success.sum() >= 2
    assert (margins[result.success] > 5.0 - 1e-3).all()


def test_cw_batch_equals_one_by_one_with_per_example_abort(model, batch):
    """Dropping aborted examples from the working batch must not couple examples (eval-mode BN). The
    EXAMPLE rule, which checks every max_iters // 10 iterations, aborts within this short budget (the
    default WINDOW rule's own test, at 300 iterations, is in test_cw_engine.py)."""
    x, y = batch
    x, target = x[:3], random_targets(y[:3], 10, seed=2)
    settings = dict(binary_search_steps=2, max_iters=15, lr=0.3, initial_const=1.0, abort_early=True,
                    abort_rule=AbortRule.EXAMPLE)
    sizes = []

    def watch(x_adv, logits, features, idx):
        sizes.append(idx.numel())
        return torch.zeros_like(logits[:, 0])

    together = cw_l2_search(model.eval(), x, target, targeted=True, extra_loss=watch, **settings)
    assert min(sizes) < 3, "some example should have aborted and left the working batch"
    alone = [cw_l2_search(model, x[i:i + 1], target[i:i + 1], targeted=True, **settings) for i in range(3)]
    torch.testing.assert_close(together.x_adv, torch.cat([r.x_adv for r in alone]), atol=1e-4, rtol=0)
    assert torch.equal(together.found, torch.cat([r.found for r in alone]))


def test_cw_search_hooks_see_the_working_rows(model, batch):
    x, y = batch
    x, target = x[:4], random_targets(y[:4], 10, seed=3)
    seen = []

    def extra_loss(x_adv, logits, features, idx):
        assert features.shape == (idx.numel(), 64) and x_adv.shape[0] == idx.numel()
        seen.append(idx.clone())
        return torch.zeros_like(logits[:, 0])

    def reject_odd(x_adv, logits, features, idx):
        return idx % 2 == 0

    out = cw_l2_search(model.eval(), x, target, targeted=True, extra_loss=extra_loss, extra_success=reject_odd,
                       **{**CW_FAST, "binary_search_steps": 2})
    assert all(set(s.tolist()) <= set(range(4)) for s in seen)
    assert not out.found[1::2].any() and out.found[0::2].any()
    assert torch.isinf(out.l2[1::2]).all()


# ------------------------------------------------------------------------------------ registry, CLI

def test_registry_calls_every_attack_the_same_way(model, batch):
    x, y = batch
    x, y = x[:4], y[:4]
    assert set(ATTACKS) == {"fgsm", "bim", "ilcm", "jsma", "cw", "cw-hc", "rand"}
    quick = {"jsma": dict(max_iters=3), "cw": dict(binary_search_steps=1, max_iters=5),
             "cw-hc": dict(binary_search_steps=1, max_iters=5)}
    for name, spec in ATTACKS.items():
        assert spec.name == name and isinstance(spec.name, Attack) and isinstance(spec.distance, Norm)
        targets = spec.targets(model, x, y, seed=0)
        assert (targets is None) == (not spec.targeted), name
        result = spec(model, x, y, eps=0.1 if spec.uses_eps else None, seed=0 if spec.uses_seed else None,
                      **quick.get(name, {}))
        assert result.x_adv.shape == x.shape and result.success.shape == (4,), name
        if spec.draws_targets:
            assert not (targets == y).any(), name
            # The targets the spec drew itself are those `targets` reports: success means reaching them.
            with torch.no_grad():
                reached = model(result.x_adv).argmax(1) == targets
            assert not (result.success & ~reached).any(), name
    with pytest.raises(InputError, match="eps"):
        ATTACKS["bim"](model, x, y)


def test_specs_refuse_what_the_attack_does_not_take(model, batch):
    x, y = batch[0][:2], batch[1][:2]
    with pytest.raises(InputError, match=r"does not take stepz: its settings are steps, step_size, loss"):
        ATTACKS["bim"](model, x, y, eps=0.1, stepz=3)
    with pytest.raises(InputError, match="takes no eps"):
        ATTACKS["cw"](model, x, y, eps=0.1, max_iters=1)
    with pytest.raises(InputError, match="takes no target"):
        ATTACKS["fgsm"](model, x, y, eps=0.1, target=y)
    with pytest.raises(InputError, match="picks its own target"):
        ATTACKS["ilcm"](model, x, y, eps=0.1, target=y)
    with pytest.raises(InputError, match="takes no seed"):
        ATTACKS["fgsm"](model, x, y, eps=0.1, seed=3)
    with pytest.raises(InputError, match="not both"):
        ATTACKS["jsma"](model, x, y, eps=0.2, theta=0.2)
    assert ATTACKS["rand"].settings == () and "kappa" in ATTACKS["cw-hc"].settings
    assert ATTACKS[Attack.CW_HC].defaults["kappa"] == 10.0


def test_jsma_eps_is_theta(model, batch):
    x, y = batch[0][:3], batch[1][:3]
    via_eps = ATTACKS["jsma"](model, x, y, eps=0.3, seed=1, max_iters=4)
    via_theta = ATTACKS["jsma"](model, x, y, theta=0.3, seed=1, max_iters=4)
    # The spec aims at the least likely class (the authors' test_adv.py); targets="random" at a random one.
    direct = jsma(model, x, least_likely_class(model, x), theta=0.3, max_iters=4)
    assert torch.equal(via_eps.x_adv, via_theta.x_adv) and torch.equal(via_eps.x_adv, direct.x_adv)
    via_random = ATTACKS["jsma"](model, x, y, eps=0.3, seed=1, max_iters=4, targets="random")
    assert torch.equal(via_random.x_adv, jsma(model, x, random_targets(y, 10, 1), theta=0.3, max_iters=4).x_adv)
    with pytest.raises(InputError, match="target rule"):
        ATTACKS["jsma"](model, x, y, eps=0.3, max_iters=4, targets="sideways")
    # The single-feature map may step a pixel again until it saturates: each step is theta.
    changed = (via_eps.x_adv - x).abs().flatten(1)
    assert changed.max() > 0 and (changed > EPS_TOL).sum(1).max() <= 4
    steps = changed / 0.3
    assert torch.all((steps - steps.round()).abs()[(changed > EPS_TOL) & (via_eps.x_adv.flatten(1) < 1)] < 1e-4)


def test_random_targets_do_not_depend_on_the_chunking(model, batch):
    x, y = batch
    spec = ATTACKS["cw"]
    whole = spec.targets(model, x, y, seed=4)
    for size in (1, 3, 5):
        parts = [spec.targets(model, x[s:s + size], y[s:s + size], seed=4, start=s) for s in range(0, N, size)]
        assert torch.equal(torch.cat(parts), whole), size
    # The spec draws the same targets itself when given `start`: chunked C&W equals C&W on the whole batch.
    settings = dict(binary_search_steps=1, max_iters=3)
    full = spec(model, x[:4], y[:4], seed=4, **settings)
    halves = [spec(model, x[s:s + 2], y[s:s + 2], seed=4, start=s, **settings) for s in (0, 2)]
    assert torch.equal(torch.cat([h.success for h in halves]), full.success)
    assert torch.allclose(torch.cat([h.x_adv for h in halves]), full.x_adv, atol=1e-6)


def test_cli_attack_saves_a_readable_file(tiny_checkpoints, tmp_path, capsys):
    from rcedetect.cli import main

    out = tmp_path / "adv.safetensors"
    code = main(["attack", str(tiny_checkpoints["ce"]), "--attack", "jsma", "--n", "6", "--max-iters", "5",
                 "--seed", "7", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0 and "success" in capsys.readouterr().out
    tensors, info = load_adversarial(out)
    assert info["attack"] == "jsma" and info["settings"] == {"max_iters": 5} and info["seed"] == 7
    assert tensors["x_adv"].shape == tensors["x"].shape == (6, 1, 28, 28)
    assert not (tensors["targets"] == tensors["labels"]).any()
    assert torch.equal(tensors["success"], tensors["adv_pred"] == tensors["targets"])
    assert main(["attack", str(tiny_checkpoints["ce"]), "--attack", "fgsm", "--n", "2", "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 2
    assert "needs --eps" in capsys.readouterr().err
