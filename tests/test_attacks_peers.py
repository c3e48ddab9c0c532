"""Cross-checks of our attacks against independent implementations on the same small models and
inputs: torchattacks (FGSM, BIM and targeted BIM = ILCM; equal up to float tolerance), foolbox
(C&W-L2: success rate and median L2 within 5 %) and advertorch (pairwise JSMA: success rate and the
number of changed features comparable). Peers are imported, not skipped: a missing peer fails."""

import pytest
import torch

from peers import import_advertorch, import_foolbox, import_torchattacks
from rcedetect.attacks import bim, cw_l2, fgsm, ilcm, jsma, random_targets
from rcedetect.attacks.ilcm import least_likely_class

N = 16


@pytest.fixture(scope="module")
def batch(mnist_test):
    return mnist_test.float_images(slice(100, 100 + N)), mnist_test.labels[100:100 + N].clone()


@pytest.mark.parametrize("objective", ["ce", "rce"])
def test_fgsm_and_bim_equal_torchattacks(tiny_models, batch, objective):
    torchattacks = import_torchattacks()
    model, (x, y) = tiny_models[objective], batch
    eps, steps = 0.15, 10
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    torch.testing.assert_close(fgsm(model, x, y, eps=eps).x_adv, theirs, atol=1e-6, rtol=0)
    # torchattacks' BIM: alpha is the step, no random start, clipped to the ball and the box.
    theirs = torchattacks.BIM(model, eps=eps, alpha=eps / steps, steps=steps)(x, y)
    torch.testing.assert_close(bim(model, x, y, eps=eps, steps=steps).x_adv, theirs, atol=1e-6, rtol=0)


def test_ilcm_equals_torchattacks_targeted_bim(tiny_models, batch):
    torchattacks = import_torchattacks()
    model, (x, y) = tiny_models["ce"], batch
    eps, steps = 0.2, 10
    y_ll = least_likely_class(model, x)
    attack = torchattacks.BIM(model, eps=eps, alpha=eps / steps, steps=steps)
    attack.set_mode_targeted_by_label(quiet=True)
    theirs = attack(x, y_ll)  # in targeted-by-label mode the labels passed are the targets
    ours = ilcm(model, x, eps=eps, steps=steps)
    torch.testing.assert_close(ours.x_adv, theirs, atol=1e-6, rtol=0)
    assert torch.equal(ours.success, model(theirs).argmax(1) == y_ll)


def _l2(a, b):
    return (a - b).flatten(1).norm(dim=1)


@pytest.mark.parametrize("abort_early", [False, True])
def test_cw_matches_foolbox(tiny_models, batch, abort_early):
    fb = import_foolbox()
    model, (x, y) = tiny_models["ce"], batch
    x, y = x[:5], y[:5]
    target = random_targets(y, 10, seed=0)
    bs, steps, lr, c0 = 3, 30, 0.2, 1.0
    ours = cw_l2(model, x, target=target, binary_search_steps=bs, max_iters=steps, lr=lr, initial_const=c0,
                 abort_early=abort_early)
    attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=bs, steps=steps, stepsize=lr, confidence=0.0,
                                              initial_const=c0, abort_early=abort_early)
    raw, _, their_success = attack(fb.PyTorchModel(model, bounds=(0, 1)), x,
                                   fb.criteria.TargetedMisclassification(target), epsilons=None)
    our_rate, their_rate = ours.success.float().mean().item(), their_success.float().mean().item()
    our_l2 = _l2(ours.x_adv, x)[ours.success].median().item()
    their_l2 = _l2(raw, x)[their_success].median().item()
    print(f"cw abort_early={abort_early}: success ours {our_rate:.3f} foolbox {their_rate:.3f}, "
          f"median L2 ours {our_l2:.4f} foolbox {their_l2:.4f}")
    assert our_rate >= 0.5, "the settings must give the comparison something to compare"
    assert abs(our_rate - their_rate) <= 0.05 + 1e-9, (our_rate, their_rate)
    assert our_l2 == pytest.approx(their_l2, rel=0.05), (our_l2, their_l2)
    if not abort_early:  # the same algorithm step for step: the same examples
        torch.testing.assert_close(ours.x_adv[ours.success], raw[ours.success], atol=1e-2, rtol=0)


def test_jsma_comparable_to_advertorch(tiny_models, batch):
    """The paper's map on F = softmax. (The logits variant shares all code but the two VJPs; it is checked
    against a brute-force pair search and batch/single equality in test_attacks.py, and matched
    advertorch on these inputs too, but costs advertorch 10 backward passes per iteration here.)"""
    output = "probs"
    advertorch = import_advertorch()
    model, (x, y) = tiny_models["ce"], batch
    x, y = x[:6], y[:6]
    target = random_targets(y, 10, seed=1)
    gamma = 0.06  # at most 23 pair iterations: advertorch computes all 10 Jacobian rows per iteration
    ours = jsma(model, x, target, theta=1.0, gamma=gamma, output=output, mode="pair")  # advertorch: pairs
    # advertorch differentiates whatever `predict` returns: give it F = softmax for the "probs" map.
    predict = lambda inp: model(inp).softmax(1)  # noqa: E731
    attack = advertorch.attacks.JacobianSaliencyMapAttack(predict, num_classes=10, clip_min=0.0, clip_max=1.0,
                                                          theta=1.0, gamma=gamma)
    theirs = attack.perturb(x, target)
    model.zero_grad(set_to_none=True)  # advertorch's .backward() left gradients on the shared model
    their_success = model(theirs).argmax(1) == target
    our_rate, their_rate = ours.success.float().mean().item(), their_success.float().mean().item()
    print(f"jsma[{output}] success ours {our_rate:.3f} advertorch {their_rate:.3f}")
    assert ours.success.sum() >= 2, "the settings must give the comparison something to compare"
    assert abs(our_rate - their_rate) <= 1 / 6 + 1e-9, (our_rate, their_rate)
    both = ours.success & their_success
    our_changed = (ours.x_adv != x).flatten(1).sum(1)[both].float().mean().item()
    their_changed = (theirs != x).flatten(1).sum(1)[both].float().mean().item()
    print(f"jsma[{output}] changed features ours {our_changed:.2f} advertorch {their_changed:.2f}")
    assert our_changed == pytest.approx(their_changed, rel=0.15), (our_changed, their_changed)
