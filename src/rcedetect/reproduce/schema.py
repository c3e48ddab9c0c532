"""The contract between the cells that write results and the report / figures that read them.

Every cell name (the JSON files under RUN/cells/) and every result key read outside its producer
is defined here once; producers (`cells_*`), `report` and `figures` import them instead of
spelling f-strings. Names, in run order:

    train.resnet<depth>-<obj>           Table 1 rows (and the models everything else attacks)
    detector.resnet<depth>-<obj>        K-density bank, calibration scores, FPR thresholds
    table2.<attack>.<obj>               Table 2 (and the measured times of appendix Table 1)
    baselines.<obj>                     the Baselines table: LID, Mahalanobis on Table 2's pairs
    tsne.<obj>                          Figure 1 right
    rand.<obj>                          appendix Figure 1, noisy inputs of appendix Figures 2-3
    fig3.<attack>.<obj>                 Figure 3
    table3.k<kappa>.<obj>               Table 3 (kappa 0), appendix Table 2 (kappa 5), Figure 4
    table4.<sub>-to-<target>            Table 4
    cwc.<obj>                           appendix Figure 4
    worstcase.<obj>                     the worst-case adaptive evaluation of every detector (beyond the paper)
"""

import numpy as np

from ..evaluation import counting_mask
from ..names import BASELINE_METRICS, PAPER_METRICS, Attack, Metric, Objective

OBJECTIVES = tuple(Objective)
METRICS = PAPER_METRICS
BASELINES = BASELINE_METRICS  # the Baselines table's detectors, in its column order
TABLE2_ATTACKS = (Attack.FGSM, Attack.BIM, Attack.ILCM, Attack.JSMA, Attack.CW, Attack.CW_HC)
FIG3_ATTACKS = (Attack.FGSM, Attack.BIM, Attack.ILCM, Attack.JSMA)

# Cell kinds: the first dot-separated part of a cell name (`--only` prefixes).
TRAIN, DETECTOR, TABLE2, TSNE, RAND, FIG3, TABLE3, TABLE4, CWC, WORST_CASE, BASELINE = (
    "train", "detector", "table2", "tsne", "rand", "fig3", "table3", "table4", "cwc", "worstcase", "baselines")


def model_tag(depth: int, objective) -> str:
    """A trained model's name: its folder under RUN/models/ and its cache-key prefix."""
    return f"resnet{depth}-{objective}"


def train_cell(depth: int, objective) -> str:
    return f"{TRAIN}.{model_tag(depth, objective)}"


def detector_cell(depth: int, objective) -> str:
    return f"{DETECTOR}.{model_tag(depth, objective)}"


def table2_cell(attack, objective) -> str:
    return f"{TABLE2}.{attack}.{objective}"


def baselines_cell(objective) -> str:
    return f"{BASELINE}.{objective}"


def tsne_cell(objective) -> str:
    return f"{TSNE}.{objective}"


def rand_cell(objective) -> str:
    return f"{RAND}.{objective}"


def fig3_cell(attack, objective) -> str:
    return f"{FIG3}.{attack}.{objective}"


def table3_cell(kappa: float, objective) -> str:
    return f"{TABLE3}.k{kappa:g}.{objective}"


def table4_cell(substitute, target) -> str:
    return f"{TABLE4}.{substitute}-to-{target}"


def cwc_cell(objective) -> str:
    return f"{CWC}.{objective}"


def worst_case_cell(objective) -> str:
    return f"{WORST_CASE}.{objective}"


def kind(cell_name: str) -> str:
    return cell_name.split(".", 1)[0]


# Result keys read by the report and the figures (besides the self-describing scalars of each cell).
PER_EXAMPLE = "per_example"    # per attacked image: LABEL, CLEAN_PRED, ADV_PRED, distortion, scores
LABEL, CLEAN_PRED, ADV_PRED = "label", "clean_pred", "adv_pred"
CLEAN_SCORES, ADV_SCORES = "clean_scores", "adv_scores"  # {metric: [score per image]}
AUC, DETECTION_RATE, ROBUST_ACCURACY = "auc", "detection_rate", "robust_accuracy_with_rejection"
AUC_OFFICIAL_TIES = "auc_official_ties"  # {metric: AUC with AUC.m's tie rule (ties count 0)}
FIGURE4 = "figure4"            # table3.k0 cells: the images of Figure 4
HIST = "hist"                  # rand cells: K-density of clean / noisy inputs (appendix Figures 2-3)
ATTACKS_BLOCK = "attacks"      # baselines cells: {attack: {SEEN, n, n_counted, AUC, DETECTION_RATE, PER_EXAMPLE}}
SEEN = "seen"                  # the attack the supervised baselines were fitted on


def counted(per_example: dict) -> np.ndarray:
    """The paper's counting filter over a stored `per_example` block (clean right, adversarial wrong)."""
    return counting_mask(per_example[LABEL], per_example[CLEAN_PRED], per_example[ADV_PRED])


# Result keys that hold wall-clock measurements: they differ between two runs of the same cell by
# nature, every other number must not (resumed, distributed and repeated runs are compared without them).
TIMING_KEYS = frozenset({"attack_seconds", "seconds_per_example", "train_seconds", "fit_seconds", "score_seconds"})


def without_timing(obj):
    """`obj` (a cell's JSON) with every `TIMING_KEYS` entry removed, at any depth."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def stored_results(run_dir) -> dict:
    """{cell name: result without timings} of every cell stored under RUN/cells/."""
    import json
    from pathlib import Path

    return {p.stem: without_timing(json.loads(p.read_text())["result"])
            for p in sorted((Path(run_dir) / "cells").glob("*.json"))}
