"""The C&W engine after the abort rules (issue 13) against its references:

* `AbortRule.EXAMPLE` and `AbortRule.NONE` are the algorithm of the previous engine: equal, at float
  tolerance, to that engine kept verbatim in tests/cw_reference.py;
* `AbortRule.WINDOW` (the default) changes when a binary step ends: foolbox parity of success and
  median L2, and the batch still couples no examples; every C&W-family entry point and the cost model
  take the rule;
* the stacked K-density path that C&W-wb's per-iteration term now takes equals the per-class path
  and a float64 brute force, values and gradients.
"""

import copy
import math

import pytest
import torch

import cw_reference
from peers import foolbox_found, import_foolbox
from rcedetect.attacks import cw_l2, cw_l2_search, random_targets
from rcedetect.detectors.kernel_density import KernelDensity
from rcedetect.errors import InputError
from rcedetect.names import AbortRule

N = 8


@pytest.fixture(scope="module")
def batch(mnist_test):
    return mnist_test.float_images(slice(200, 200 + N)), mnist_test.labels[200:200 + N].clone()


@pytest.mark.parametrize("rule", [AbortRule.EXAMPLE, AbortRule.NONE])
@pytest.mark.parametrize("targeted,kappa", [(True, 0.0), (False, 0.0), (True, 5.0)])
def test_unchanged_rules_equal_the_previous_engine(tiny_models, batch, rule, targeted, kappa):
    model = tiny_models["rce"].eval()
    x, y = batch
    labels = random_targets(y, 10, seed=4) if targeted else y
    settings = dict(targeted=targeted, kappa=kappa, binary_search_steps=4, max_iters=40, lr=0.1, initial_const=1.0)
    ours = cw_l2_search(model, x, labels, abort_rule=rule, **settings)
    before = cw_reference.cw_l2_search(model, x, labels, abort_early=rule == AbortRule.EXAMPLE, **settings)
    assert ours.found.any(), "the settings must give the comparison something to compare"
    assert torch.equal(ours.found, before.found)
    torch.testing.assert_close(ours.x_adv, before.x_adv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.l2, before.l2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.const, before.const)


def test_abort_early_false_is_rule_none(tiny_models, batch):
    model = tiny_models["ce"].eval()
    x, y = batch
    settings = dict(targeted=False, binary_search_steps=2, max_iters=20, lr=0.1, initial_const=1.0)
    a = cw_l2_search(model, x, y, abort_early=False, abort_rule=AbortRule.WINDOW, **settings)
    b = cw_l2_search(model, x, y, abort_rule=AbortRule.NONE, **settings)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.found, b.found)


def test_unknown_rule_is_refused(tiny_models, batch):
    x, y = batch
    with pytest.raises(InputError, match="unknown abort rule 'batch': choose one of none, example, window"):
        cw_l2(tiny_models["ce"], x[:1], y[:1], max_iters=2, abort_rule="batch")


def _iterations(model, x, labels, rule, settings):
    rows = []

    def count(x_adv, logits, features, idx):
        rows.append(idx.numel())
        return torch.zeros_like(logits[:, 0])

    rule = {} if rule is None else {"abort_rule": rule}  # None: the default
    out = cw_l2_search(model, x, labels, extra_loss=count, **rule, **settings)
    return out, sum(rows)


def test_window_rule_batch_equals_one_by_one(tiny_models, batch):
    # float64: 300 iterations at lr 0.3 amplify float32's batch-size-dependent convolution rounding
    # beyond any fixed tolerance; in float64 that rounding stays far below it.
    model = copy.deepcopy(tiny_models["ce"]).double().eval()
    x, y = batch
    x, target = x[:4].double(), random_targets(y[:4], 10, seed=2)
    settings = dict(targeted=True, binary_search_steps=2, max_iters=300, lr=0.3, initial_const=1.0)
    together, rows = _iterations(model, x, target, AbortRule.WINDOW, settings)
    assert rows < 4 * 2 * 300, "some example should have aborted early"
    alone = [cw_l2_search(model, x[i:i + 1], target[i:i + 1], abort_rule=AbortRule.WINDOW, **settings)
             for i in range(4)]
    torch.testing.assert_close(together.x_adv, torch.cat([r.x_adv for r in alone]), atol=1e-4, rtol=0)
    assert torch.equal(together.found, torch.cat([r.found for r in alone]))


def test_window_rule_runs_between_the_instant_rule_and_none(tiny_models, batch):
    """With lr 0.3 (an oscillating loss) the window rule runs longer than the instant rule and shorter
    than no abort: what it is for. (Not an identity: both rules compare with their own last check.)"""
    model = tiny_models["rce"].eval()
    x, y = batch
    target = random_targets(y, 10, seed=5)
    settings = dict(targeted=True, binary_search_steps=3, max_iters=300, lr=0.3, initial_const=1.0)
    counts = {rule: _iterations(model, x, target, rule, settings)[1] for rule in AbortRule}
    assert counts[AbortRule.EXAMPLE] <= counts[AbortRule.WINDOW] <= counts[AbortRule.NONE] == N * 3 * 300, counts
    assert counts[AbortRule.WINDOW] < counts[AbortRule.NONE], counts


@pytest.mark.parametrize("rule,iterations", [(AbortRule.WINDOW, {51, 101, 151, 200}),
                                             (AbortRule.EXAMPLE, set(range(21, 200, 20)) | {200})])
def test_where_a_step_can_end(tiny_models, batch, rule, iterations):
    """A step ends at max_iters or right after a check: every max_iters // 10 iterations for EXAMPLE, at
    least WINDOW_MIN_CHECK = 50 apart for WINDOW (a short window ends steps that still improve at a large lr)."""
    model = tiny_models["rce"].eval()
    x, y = batch
    per_example = torch.zeros(N, dtype=torch.long)

    def count(x_adv, logits, features, idx):
        per_example.index_add_(0, idx, torch.ones_like(idx))
        return torch.zeros_like(logits[:, 0])

    cw_l2_search(model, x, random_targets(y, 10, seed=5), targeted=True, binary_search_steps=1, max_iters=200,
                 lr=0.3, initial_const=1.0, abort_rule=rule, extra_loss=count)
    assert set(per_example.tolist()) <= iterations, per_example.tolist()
    assert (per_example < 200).any(), "the settings must make some example end its step early"


def test_window_rule_matches_foolbox(tiny_models, batch):
    """foolbox aborts a step on the batch's summed loss; ours per example on the window's best loss:
    a changed abort rule, so parity of success and median L2 (not of the examples)."""
    fb = import_foolbox()
    model = tiny_models["ce"].eval()
    x, y = batch
    target = random_targets(y, 10, seed=0)
    bs, steps, lr, c0 = 3, 100, 0.2, 1.0
    ours = cw_l2(model, x, target=target, binary_search_steps=bs, max_iters=steps, lr=lr, initial_const=c0,
                 abort_rule=AbortRule.WINDOW)
    attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=bs, steps=steps, stepsize=lr, confidence=0.0,
                                              initial_const=c0)
    raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.TargetedMisclassification(target),
                       epsilons=None)
    their_success = foolbox_found(raw) & (model(raw).argmax(1) == target)
    l2 = lambda a: (a - x).flatten(1).norm(dim=1)  # noqa: E731
    our_rate, their_rate = ours.success.float().mean().item(), their_success.float().mean().item()
    our_l2, their_l2 = l2(ours.x_adv)[ours.success].median().item(), l2(raw)[their_success].median().item()
    print(f"window rule: success ours {our_rate:.3f} foolbox {their_rate:.3f}; median L2 ours {our_l2:.4f} "
          f"foolbox {their_l2:.4f}")
    assert our_rate >= 0.5, "the settings must give the comparison something to compare"
    assert our_rate >= their_rate - 1 / N - 1e-9
    assert our_l2 == pytest.approx(their_l2, rel=0.05)


def test_stacked_kernel_density_equals_per_class_and_brute_force():
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(600, 64, generator=gen), torch.arange(10).repeat(60)
    kd = KernelDensity(1 / 0.26, n_per_class=40).fit(feats, labels, num_classes=10)
    queries = (torch.randn(33, 64, generator=gen) * 0.3).requires_grad_(True)
    classes = torch.randint(0, 10, (33,), generator=gen)
    stacked = kd.log_density_for_class(queries, classes)  # autograd on: the stacked path
    assert "stacked" in [key[0] for key in kd._cache], "the gradient call should take the stacked path"
    (grad_stacked,) = torch.autograd.grad(stacked.sum(), queries)
    q = queries.detach().requires_grad_(True)
    per_class = torch.cat([kd._class_log_density(q[i:i + 1], kd._banks(q.device, q.dtype)[int(c)])
                           for i, c in enumerate(classes)])
    (grad_per_class,) = torch.autograd.grad(per_class.sum(), q)
    torch.testing.assert_close(stacked, per_class, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_stacked, grad_per_class, atol=1e-5, rtol=1e-4)
    bank, bank_labels = kd.bank_.double(), torch.repeat_interleave(torch.arange(10), kd.bank_counts_)
    brute = torch.stack([torch.logsumexp(-((queries[i].detach().double() - bank[bank_labels == c]) ** 2).sum(1)
                                         * 0.26, 0) - math.log(40) for i, c in enumerate(classes.tolist())])
    torch.testing.assert_close(stacked.detach().double(), brute, atol=1e-5, rtol=1e-6)


def test_registry_and_cli_take_the_abort_rule(tiny_models, batch):
    from rcedetect.attacks import ATTACKS
    from rcedetect.cli import build_parser
    from rcedetect.names import Attack

    x, y = batch
    spec = ATTACKS[Attack.CW]
    assert "abort_rule" in spec.settings
    settings = dict(binary_search_steps=1, max_iters=10, lr=0.1, initial_const=1.0)
    a = spec(tiny_models["ce"], x[:2], y[:2], abort_rule="example", **settings)
    b = cw_l2(tiny_models["ce"], x[:2], target=spec.targets(tiny_models["ce"], x[:2], y[:2]), abort_rule="example",
              **settings)
    assert torch.equal(a.x_adv, b.x_adv)
    args = build_parser().parse_args(["attack", "ckpt", "--attack", "cw", "--out", "a.safetensors",
                                      "--abort-rule", "example"])
    assert args.abort_rule == "example"
    # The same option reaches C&W-wb's keywords (and an unknown rule is refused at the edge).
    from rcedetect.cli import _threat_models
    from rcedetect.cli import attack as attack_cli
    from rcedetect.cli._common import chosen_settings

    wb = chosen_settings(args, Attack.CW_WB, (attack_cli.SETTINGS, _threat_models.SETTINGS))
    assert wb == {"abort_rule": "example"}


def test_window_is_the_default_rule(tiny_models, batch):
    """Without `abort_rule`, C&W runs WINDOW (which here ends steps, so EXAMPLE gives other iterations)."""
    model = tiny_models["rce"].eval()
    x, y = batch
    settings = dict(targeted=False, binary_search_steps=2, max_iters=200, lr=0.3, initial_const=1.0)
    default, window = _iterations(model, x, y, None, settings), _iterations(model, x, y, AbortRule.WINDOW, settings)
    example = _iterations(model, x, y, AbortRule.EXAMPLE, settings)
    assert default[1] == window[1] and torch.equal(default[0].x_adv, window[0].x_adv)
    assert example[1] != window[1] and window[1] < N * 2 * 200


@pytest.mark.parametrize("rule", list(AbortRule))
def test_cw_wb_and_the_detector_attack_pass_the_rule_to_both_phases(tiny_models, batch, monkeypatch, rule):
    import importlib

    cw_wb_module = importlib.import_module("rcedetect.attacks.cw_wb")  # the module (the package exports the function)
    from rcedetect.detectors import ConfidenceMetric, ThresholdDetector, collect_outputs

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["abort_rule"])
        return cw_l2_search(*args, **kwargs)

    monkeypatch.setattr(cw_wb_module, "cw_l2_search", spy)
    model = tiny_models["ce"].eval()
    x, y = batch
    outputs = collect_outputs(model, x)
    # Plumbing only: a two-point bank per class, on noise images.
    bank = collect_outputs(model, torch.rand(20, *x.shape[1:], generator=torch.Generator().manual_seed(0)))
    kd = KernelDensity.for_objective("ce", n_per_class=2, seed=0).fit(bank, torch.arange(10).repeat(2))
    budget = dict(binary_search_steps=1, max_iters=2, lr=0.1, initial_const=1.0)
    target = (y[:2] + 1) % 10
    cw_wb_module.cw_wb(model, x[:2], y[:2], kd, target=target, attack_bank_size=2, abort_rule=rule, **budget)
    detector = ThresholdDetector(ConfidenceMetric(), fpr=0.1).fit(calibration=outputs)
    cw_wb_module.cw_l2_detector(model, x[:2], y[:2], detector, abort_rule=rule, **budget)
    assert seen == [rule] * 3


def test_cost_model_prices_each_rule_by_its_measured_fraction():
    from rcedetect.reproduce.costs import COSTS

    budget = {"binary_search_steps": 3, "max_iters": 500}
    price = {rule: COSTS.cw_gradients({**budget, "abort_rule": rule.value}) for rule in AbortRule}
    assert price[AbortRule.EXAMPLE] < price[AbortRule.WINDOW] < price[AbortRule.NONE]
    assert price[AbortRule.NONE] == pytest.approx(1500 * COSTS.cw_iteration)
    assert COSTS.cw_gradients(budget) == price[AbortRule.WINDOW]  # the default rule
    assert COSTS.cw_gradients({**budget, "abort_early": False}) == price[AbortRule.NONE]
    wb = {**budget, "phase1_binary_search_steps": 1, "abort_rule": "example"}
    assert COSTS.cwwb_gradients(wb) == pytest.approx(price[AbortRule.EXAMPLE] * 4 / 3)
