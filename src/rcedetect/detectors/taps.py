"""Layer taps: intermediate activations of any `nn.Module`, by module path, with forward hooks.

    with LayerTaps(model, ["stem", "blocks.4", "fc:input"]) as taps:
        logits, features = taps(x)          # features: {"stem": (N, 16), "blocks.4": (N, 16), "fc:input": (N, 64)}

    logits, features = LayerTaps(model, ["layer1", "layer2.0.conv1"])(x)   # hooks live for one call only

A layer is named by its module path in `dict(model.named_modules())` ("blocks.4", "layer2.0.conv1");
`path` taps the module's output and `path:input` its first positional input (the root model's input
is ":input"). The `:input` form reaches activations that no module returns, e.g. our ResNet's
penultimate features, computed functionally and fed to `fc`.

Reductions of each tapped activation (channels first, (N, C, ...)):
    "mean"     spatial average over every dimension after C: (N, C)  [Lee et al. 2018's features]
    "flatten"  (N, C * H * W)                                          [Ma et al. 2018's LID inputs]
    "none"     the activation as the module produced it

Tapped tensors keep their autograd graph (the Mahalanobis input preprocessing back-propagates
through them); `collect_layer_features` runs over a whole dataset without autograd. Hooks are
removed when the call or the `with` block ends, also on exceptions.
"""

import difflib
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InputError
from ..models import PreActResNet

INPUT_PORT = "input"


class TappedOutput(NamedTuple):
    """The model's own output (logits for rcedetect's models) and {layer name: reduced activation}."""

    output: torch.Tensor
    features: dict


def _spatial_mean(t: torch.Tensor) -> torch.Tensor:
    if t.dim() < 2:
        raise InputError(f"cannot average a tapped activation of shape {tuple(t.shape)}: expected (N, C, ...)")
    return t if t.dim() == 2 else t.mean(dim=tuple(range(2, t.dim())))


def _flatten(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


REDUCTIONS = {"mean": _spatial_mean, "flatten": _flatten, "none": _identity}


def _parse_layer(spec: str, modules: dict):
    """(module path, tap the input?) of a layer name; InputError with close matches when unknown."""
    if not isinstance(spec, str):
        raise InputError(f"layer names are module paths (str), got {spec!r}")
    path, sep, port = spec.partition(":")
    if sep and port != INPUT_PORT:
        raise InputError(f"layer {spec!r}: the only suffix is ':{INPUT_PORT}' (the module's input), got ':{port}'")
    if path not in modules:
        names = [n for n in modules if n]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = (f"close matches: {', '.join(close)}" if close
                else f"available: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
        raise InputError(f"unknown layer {path!r} in {type(modules['']).__name__} ({hint}); "
                         f"layers are module paths from model.named_modules()")
    return path, bool(sep)


class LayerTaps:
    """Capture activations of `layers` of `model` (module paths, see the module docstring).

    Args:
        model: any `nn.Module`; `taps(x)` calls `model(x)`.
        layers: layer names, in the order the features dict will have.
        reduce: "mean" (spatial average, (N, C)), "flatten" ((N, C*H*W)) or "none". Default "mean".

    `taps(x)` returns `TappedOutput(model(x), {name: activation})`. Inside `with taps:` the hooks stay
    attached (and `taps.features` holds the last forward pass's captures, also when the caller runs
    `model(x)` itself); outside, each call attaches and removes them. A layer whose module does not run
    in the forward pass, or runs twice (a reused module: ambiguous), raises InputError. A new pass
    starts (the captures are cleared) when the module `clear_on` runs: the root model by default; a
    method that bypasses `forward` (our ResNets' `forward_features`) needs its first module, "stem".
    """

    def __init__(self, model: nn.Module, layers, *, reduce: str = "mean", clear_on: str = ""):
        if not isinstance(model, nn.Module):
            raise InputError(f"LayerTaps needs an nn.Module, got {type(model).__name__}")
        if isinstance(layers, str):
            raise InputError(f"layers must be a list of module paths, got the string {layers!r}: wrap it in a list")
        layers = tuple(layers)
        if not layers:
            raise InputError("LayerTaps needs at least one layer name")
        if len(set(layers)) != len(layers):
            raise InputError(f"duplicate layer names in {list(layers)}")
        if reduce not in REDUCTIONS:
            raise InputError(f"unknown reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
        modules = dict(model.named_modules())
        if clear_on not in modules:
            raise InputError(f"clear_on {clear_on!r} is not a module of the model: pass a module path such as 'stem'")
        self._clear_on = modules[clear_on]
        self._targets = [(name, *_parse_layer(name, modules)) for name in layers]
        self._modules = modules
        self.model = model
        self.layers = layers
        self.reduce = reduce
        self._handles = []
        self.features = {}

    # --------------------------------------------------------------------------------- hooks
    def _store(self, name: str, value):
        if not torch.is_tensor(value):
            raise InputError(f"layer {name!r} produced a {type(value).__name__}, not a tensor: "
                             f"tap a module that returns one tensor")
        if name in self.features:
            raise InputError(f"layer {name!r} ran twice in one forward pass (a reused module): "
                             f"tap a module that runs once")
        self.features[name] = REDUCTIONS[self.reduce](value)

    def _attach(self):
        # Registered first, so it runs before a ":input" tap of that module itself.
        self._handles.append(self._clear_on.register_forward_pre_hook(lambda module, args: self.features.clear()))
        for name, path, on_input in self._targets:
            module = self._modules[path]
            if on_input:
                def hook(module, args, name=name):
                    if not args:
                        raise InputError(f"layer {name!r}: the module got no positional input to tap")
                    self._store(name, args[0])
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(
                    lambda module, args, output, name=name: self._store(name, output)))

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model now (inside `with taps:`)."""
        return bool(self._handles)

    def _detach(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "LayerTaps":
        if self._handles:
            raise InputError("these LayerTaps are already attached: do not nest `with` blocks of one instance")
        self._attach()
        return self

    def __exit__(self, *exc_info):
        self._detach()
        return False

    # ------------------------------------------------------------------------------- calling
    def __call__(self, x, *args, **kwargs) -> TappedOutput:
        """Run `model(x, *args, **kwargs)` and return its output with the tapped features."""
        attached_here = not self._handles
        if attached_here:
            self._attach()
        try:
            output = self.model(x, *args, **kwargs)
            missing = [name for name in self.layers if name not in self.features]
            if missing:
                raise InputError(f"layers {missing} did not run in the forward pass of {type(self.model).__name__}")
            features = {name: self.features[name] for name in self.layers}
        finally:
            if attached_here:
                self._detach()
        return TappedOutput(output, features)

    def __repr__(self) -> str:
        return f"LayerTaps({type(self.model).__name__}, {list(self.layers)}, reduce={self.reduce!r})"


def default_layers(model) -> list:
    """The layers tapped by default for rcedetect's pre-activation ResNet:

        "stem"              the first convolution's output (the blocks' input),
        "blocks.<i>"        the output of each stage's last block (3 stages: 16, 32, 64 channels),
        "fc:input"          the penultimate features, GAP after the last BN + leaky ReLU (= ModelOutput.features).

    This follows Lee et al. 2018's ResNet choice (the stem and each stage's output, deep_Mahalanobis_detector
    models/resnet.py `feature_list`), plus the penultimate features the paper's K-density uses. Our blocks
    are pre-activation, so the stage outputs are un-normalised residual sums. Other models: pass names.
    """
    if not isinstance(model, PreActResNet):
        raise InputError(f"no default layers for {type(model).__name__}: pass layer names "
                         f"(module paths from model.named_modules())")
    n = len(model.blocks) // 3
    return ["stem"] + [f"blocks.{(stage + 1) * n - 1}" for stage in range(3)] + [f"fc:{INPUT_PORT}"]


@torch.no_grad()
def collect_layer_features(model, images, layers=None, *, reduce: str = "mean", batch_size: int = 500,
                           device=None) -> TappedOutput:
    """`LayerTaps(model, layers, reduce=reduce)` over a whole set of images in batches, without autograd.

    `images`: (N, C, H, W) uint8 in [0, 255] or float in [0, 1]; `layers` default `default_layers(model)`.
    Returns `TappedOutput(output (N, L), {layer: (N, D)})` on the CPU in float32; the model's
    train/eval mode is restored afterwards.
    """
    layers = default_layers(model) if layers is None else layers
    device = device or next(model.parameters()).device
    taps = LayerTaps(model, layers, reduce=reduce)
    was_training = model.training
    model.eval()
    outputs, features = [], {name: [] for name in taps.layers}
    try:
        with taps:
            for start in range(0, images.shape[0], batch_size):
                batch = images[start:start + batch_size].to(device)
                batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
                out, feats = taps(batch)
                if not torch.is_tensor(out):
                    raise InputError(f"{type(model).__name__} returned a {type(out).__name__}, expected a tensor")
                outputs.append(out.float().cpu())
                for name, value in feats.items():
                    features[name].append(value.float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        raise InputError("collect_layer_features got zero images")
    return TappedOutput(torch.cat(outputs), {name: torch.cat(parts) for name, parts in features.items()})


def as_layer_features(x, what: str = "features") -> dict:
    """{layer: (N, D) tensor} from a `TappedOutput` or such a dict; InputError otherwise (rows must agree)."""
    features = x.features if isinstance(x, TappedOutput) else x
    if not isinstance(features, dict) or not features:
        raise InputError(f"{what} must be a non-empty dict {{layer name: (N, D) tensor}} or a TappedOutput, "
                         f"got {type(x).__name__}")
    rows = set()
    for name, value in features.items():
        if not torch.is_tensor(value) or value.dim() != 2:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise InputError(f"{what}[{name!r}] must be a (N, D) tensor, got {shape}: "
                             f"tap with reduce='mean' or 'flatten'")
        rows.add(value.shape[0])
    if len(rows) != 1:
        raise InputError(f"{what} layers have different numbers of rows {sorted(rows)}: pass one batch of inputs")
    return dict(features)
