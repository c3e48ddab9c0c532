"""Adversarial examples of a run, computed in cached, resumable chunks (the cells' attack runner).

Every attack runs over a prefix of the run's permutation in chunks of `preset.chunk` images; each
chunk is cached (`CellStore.chunked`), so a killed run resumes at its first missing chunk. Chunking
never changes a number: the attacks draw random targets from the *global* index of each image
(`start` = the chunk's first index) and the C&W-wb attack bank from the seed alone.
"""

from ..attacks import ATTACKS, CWWBResult
from ..evaluation.threat_models import run_cw_wb
from ..names import Attack
from .context import PERMUTATION_STREAM
from .progress import NO_PROGRESS

_BOOL_FIELDS = ("success", "fooled", "phase1_success")


def attack_examples(ctx, which: int, objective, attack, n: int, *, eps=None, settings=None, label=None,
                    progress=NO_PROGRESS, lo: float = 0.0, hi: float = 1.0):
    """`attack` on the first `n` attacked images of model (`which`, `objective`).

    Returns (tensors {"x_adv", "success"} on the CPU, attack seconds summed over chunks).
    """
    spec = ATTACKS[Attack.coerce(attack)]
    settings = dict(settings or {})
    config = {"model": ctx.model_identity(which, objective), "attack": attack, "n": n, "eps": eps,
              "settings": settings, "seed": ctx.seed, "permutation_stream": PERMUTATION_STREAM}
    model = ctx.model(which, objective)
    x, y = ctx.images(n)

    seed = ctx.seed if spec.uses_seed else None  # a deterministic attack refuses a seed

    def chunk(start, stop):
        result = spec(model, ctx.on_device(x[start:stop]), y[start:stop].to(ctx.device), eps=eps, seed=seed,
                      start=start, **settings)
        return {"x_adv": result.x_adv, "success": result.success}

    label = label or str(attack)
    key = f"{ctx.tag(which, objective)}.{label}".replace(" ", "_")
    return ctx.store.chunked(key, config, n, ctx.preset.chunk, chunk, on_chunk=progress.chunk_callback(label, lo, hi))


def cwwb_config(ctx, kappa: float, objective) -> dict:
    """What the C&W-wb examples of the main model depend on (the key of their cache)."""
    return {"model": ctx.model_identity(0, objective), "kd": ctx.kd_params(objective), "kappa": float(kappa),
            "n": ctx.preset.cwwb_n, "settings": ctx.preset.cwwb_settings_for(kappa), "seed": ctx.seed}


def cwwb_chunk(ctx, kappa: float, objective):
    """`chunk(start, stop) -> dict of CWWBResult fields` for rows start:stop of the C&W-wb images."""
    x, y = ctx.images(ctx.preset.cwwb_n)
    model, kd = ctx.model(0, objective), ctx.kd(0, objective)

    def chunk(start, stop):
        result = run_cw_wb(model, kd, ctx.on_device(x[start:stop]), y[start:stop].to(ctx.device), kappa=float(kappa),
                           seed=ctx.seed, start=start, **ctx.preset.cwwb_settings_for(kappa))
        return result._asdict()

    return chunk


def as_cwwb_result(tensors: dict) -> CWWBResult:
    """The fields of a cached C&W-wb run as a `CWWBResult` (masks back to bool)."""
    fields = {k: tensors[k] for k in CWWBResult._fields}
    for name in _BOOL_FIELDS:
        fields[name] = fields[name].bool()
    return CWWBResult(**fields)


def cwwb_examples(ctx, kappa: float, objective, *, progress=NO_PROGRESS, lo: float = 0.0, hi: float = 1.0):
    """C&W-wb on the first `cwwb_n` images against the main model's K-density (cached, chunked).

    Returns (CWWBResult on the CPU, attack seconds summed over chunks).
    """
    label = f"cw-wb-k{kappa:g}"
    tensors, seconds = ctx.store.chunked(f"{ctx.tag(0, objective)}.{label}", cwwb_config(ctx, kappa, objective),
                                         ctx.preset.cwwb_n, ctx.preset.chunk, cwwb_chunk(ctx, kappa, objective),
                                         on_chunk=progress.chunk_callback(label, lo, hi))
    return as_cwwb_result(tensors), seconds

