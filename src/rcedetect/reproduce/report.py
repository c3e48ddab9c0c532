"""`rcedetect report RUN`: a Markdown + HTML report rendered from the run's JSON only.

    render_report(run_dir) -> {"markdown": RUN/report.md, "html": RUN/report.html, "checks": RUN/checks.json,
                               "figures": {...}}

The sanity checks of the evaluation first (`checks`), then the protocol (every choice the paper
leaves open, against the authors' code), our tables side by side with the paper's numbers
(`paper_values`), the figures (`figures`), the settings, and what the numbers mean and do not mean at the run's scale. AUCs carry a 95 % bootstrap
interval over the counted pairs (paired resampling, 500 draws, seeded), computed here from the
per-example scores stored in the cells: the spread a reader needs to judge a difference at small n.
"""

import base64
import html
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from .. import __version__
from ..files import atomic_write_bytes
from ..errors import InputError
from . import paper_values as paper
from ..names import SUPERVISED_METRICS, Attack, Dataset, Formulation, Metric, Norm, Objective, TargetRule
from . import schema
from .checks import FAIL, sanity_checks, to_json
from .figures import make_figures
from .schema import METRICS, OBJECTIVES, TABLE2_ATTACKS
from .store import CellStore, check_records

BOOTSTRAP = 500
# The metrics whose scores can tie between a clean and an adversarial input (saturation / underflow).
TIE_METRICS = (Metric.CONFIDENCE, Metric.KD)


# ------------------------------------------------------------------------------------ numbers
def bootstrap_auc_interval(clean, adv, *, draws: int = BOOTSTRAP, seed: int = 0):
    """95 % percentile interval of the AUC under paired resampling of (clean_i, adv_i), or None (< 2 pairs)."""
    clean, adv = np.asarray(clean, np.float64), np.asarray(adv, np.float64)
    m = clean.size
    if m < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(draws, m))
    scores = np.concatenate([clean[idx], adv[idx]], axis=1)
    ranks = rankdata(scores, axis=1)  # average ranks: ties count one half, as in roc_auc_score
    auc = (ranks[:, :m].sum(1) - m * (m + 1) / 2) / (m * m)
    lo, hi = np.percentile(auc, [2.5, 97.5])
    return float(lo), float(hi)


def _f(value, digits=1, scale=1.0, dash="–"):
    return dash if value is None else f"{value * scale:.{digits}f}"


def _auc_text(res, metric):
    auc = res[schema.AUC].get(metric)
    if auc is None:
        return "–"
    text = f"{100 * auc:.1f}"
    pe = res.get(schema.PER_EXAMPLE)
    if pe is not None:
        mask = schema.counted(pe)
        ci = bootstrap_auc_interval(np.asarray(pe[schema.CLEAN_SCORES][metric])[mask],
                                    np.asarray(pe[schema.ADV_SCORES][metric])[mask])
        if ci is not None:
            text += f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
    return text


# ------------------------------------------------------------------------------------- blocks
# Each block renders itself to Markdown and to HTML (one class per kind instead of a dispatch on a tag).
@dataclass(frozen=True)
class Heading:
    level: int
    text: str

    def markdown(self) -> str:
        return "#" * self.level + " " + self.text

    def html(self, run_dir: Path) -> str:
        return f"<h{self.level}>{_inline(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def markdown(self) -> str:
        return self.text

    def html(self, run_dir: Path) -> str:
        return f"<p>{_inline(self.text)}</p>"


@dataclass(frozen=True)
class Bullets:
    items: tuple

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self, run_dir: Path) -> str:
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in self.items) + "</ul>"


@dataclass(frozen=True)
class Table:
    headers: tuple
    rows: tuple

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join(" --- " for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self, run_dir: Path) -> str:
        head = "".join(f"<th>{_inline(h)}</th>" for h in self.headers)
        rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


@dataclass(frozen=True)
class Image:
    path: str  # relative to the run folder
    caption: str

    def markdown(self) -> str:
        return f"![{self.caption}]({self.path})\n\n*{self.caption}*"

    def html(self, run_dir: Path) -> str:
        # Embedded, so that report.html is one self-contained file.
        data = base64.b64encode((run_dir / self.path).read_bytes()).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(self.caption)}">'
                f"<figcaption>{_inline(self.caption)}</figcaption></figure>")


HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
              "line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
              "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
              "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
              "figcaption{font-style:italic;font-size:0.9em}code{background:#f3f3f3;padding:0 3px}")


class Doc:
    """A list of blocks rendered to Markdown and to HTML."""

    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(Heading(level, text))

    def p(self, text):
        self.blocks.append(Paragraph(text))

    def bullets(self, items):
        self.blocks.append(Bullets(tuple(items)))

    def table(self, headers, rows):
        self.blocks.append(Table(tuple(headers), tuple(tuple(r) for r in rows)))

    def image(self, path, caption):
        self.blocks.append(Image(path, caption))

    def markdown(self) -> str:
        return "\n\n".join(block.markdown() for block in self.blocks) + "\n"

    def html(self, run_dir: Path, title: str) -> str:
        body = [block.html(run_dir) for block in self.blocks]
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"(?<!\w)\*(\S.*?)\*(?!\w)", r"<i>\1</i>", text)


# ------------------------------------------------------------------------------------ sections
class _Report:
    def __init__(self, run_dir: Path, info: dict, records: dict, figures: dict):
        self.run_dir, self.info, self.records, self.figures = run_dir, info, records, figures
        self.settings = info.get("settings", {})
        self.dataset = Dataset.coerce(info["dataset"])
        self.depths = self.settings.get("depths", [32, 56])
        self.checks = sanity_checks(records)
        self.doc = Doc()

    def res(self, name):
        record = self.records.get(name)
        return None if record is None else record["result"]

    def figure(self, name, caption):
        if name in self.figures:
            self.doc.image(str(Path("figures") / self.figures[name].name), caption)
        else:
            self.doc.p(f"*({caption.split('.')[0]}: not computed in this run.)*")

    def model(self, which, obj):
        return f"ResNet-{self.depths[which]} ({obj.display})"

    def header(self):
        d = self.doc
        provenance = [r["provenance"] for r in self.records.values()]
        commits = sorted({p.get("git_commit") or "unknown" for p in provenance})
        devices = sorted({p.get("device", "?") for p in provenance})
        times = sorted(p.get("finished_utc", "") for p in provenance)
        wall = sum(p.get("wall_seconds", 0.0) for p in provenance)
        d.h(1, f"rcedetect reproduction — {self.dataset.display}, preset `{self.info['preset']}`")
        d.p(f"Pang, Du, Dong & Zhu, *Towards Robust Detection of Adversarial Examples* (NeurIPS 2018), "
            f"re-run by rcedetect. Rendered {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
            f"`{self.run_dir}/cells/*.json` ({len(self.records)} cells).")
        d.table(["", ""], [
            ["cells computed", f"{times[0] if times else '–'} … {times[-1] if times else '–'} (UTC)"],
            ["compute time (sum over cells, incl. training)", f"{wall / 60:.1f} min"],
            ["device(s)", ", ".join(devices)],
            ["rcedetect version / git commit", f"{__version__} / {', '.join(commits)}"],
        ])

    def sanity(self):
        d = self.doc
        d.h(2, "Sanity checks — can this evaluation be trusted?")
        d.p("Computed from the cells by `rcedetect.reproduce.checks` (after Carlini et al. 2019, *On Evaluating "
            "Adversarial Robustness*, and AutoAttack's checks) and stored in `checks.json`. A failing check stops "
            "nothing: it says which numbers below must not be read at face value. *n/a*: the cells it needs are "
            "not in this run.")
        d.table(["check", "status", "detail"],
                [[c.name, f"**{c.status}**" if c.status == FAIL else c.status, c.detail] for c in self.checks])
        failed = [c for c in self.checks if c.status == FAIL]
        if failed:
            d.p(f"**{len(failed)} of {len(self.checks)} checks FAIL.** What each failure means for the numbers "
                f"of this report:")
            d.bullets([f"**{c.name}** — {c.meaning}" for c in failed])

    def cell_settings(self, name, fallback: dict) -> dict:
        """The attack settings one cell ran with (its result, else its config), else `fallback` (the run's)."""
        record = self.records.get(name) or {}
        for source in (record.get("result", {}), record.get("config", {})):
            if source.get("settings"):
                return dict(source["settings"])
        return dict(fallback)

    def attack_settings(self, attack) -> dict:
        """Table 2's settings of `attack` (as its CE cell ran it)."""
        return self.cell_settings(schema.table2_cell(attack, Objective.CE),
                                  self.settings.get("attack_settings", {}).get(attack, {}))

    def jsma_settings(self):
        # The attack's defaults where a cell does not name them (jsma(mode="single"), least-likely targets).
        return {"mode": "single", "targets": TargetRule.LEAST_LIKELY.value, **self.attack_settings(Attack.JSMA)}

    def jsma_budget(self) -> str:
        s = self.jsma_settings()
        per_iter = 2 if s["mode"] == "pair" else 1
        return f"≤ {per_iter * s.get('max_iters', 100)} pixels"

    def cwwb_settings(self, kappa) -> dict:
        """C&W-wb's settings at margin `kappa` (as the CE cell of Table 3 ran it)."""
        return self.cell_settings(schema.table3_cell(kappa, Objective.CE), self.settings.get("cwwb_settings", {}))

    def cw_budget(self, attack) -> str:
        """'steps × iterations' of a Table 2 C&W-family attack, as its CE cell ran it."""
        c = self.attack_settings(attack)
        return f"{c.get('binary_search_steps', '?')} × {c.get('max_iters', '?')}"

    def cwwb_budget(self, kappa=0.0) -> str:
        w = self.cwwb_settings(kappa)
        bss, iters = w.get("binary_search_steps", "?"), w.get("max_iters", "?")
        p1 = (w.get("phase1_binary_search_steps") or bss, w.get("phase1_max_iters") or iters)
        return f"{p1[0]} × {p1[1]} + {bss} × {iters}"

    def protocol(self):
        d = self.doc
        s = self.settings
        d.h(2, "Protocol — every choice the paper leaves open")
        d.p("Where the paper is silent, what this run did (read from `run.json` and the cells) and what the "
            "authors' code (github.com/P2333/Reverse-Cross-Entropy, TF1 + MATLAB; images in [−0.5, 0.5], so every "
            "ε is the same number as in our [0, 1] units) does, with the file it is read from. `docs/protocol.md` "
            "holds the same list in static form.")
        jsma = self.jsma_settings()
        mode_text = ("single-feature map (one feature per iteration)" if jsma["mode"] == "single"
                     else "pairwise map (two features per iteration)")
        theta = jsma.get("theta", s.get("eps", {}).get(Attack.JSMA))
        cw_rows = []
        for attack in (Attack.CW, Attack.CW_HC):
            c = self.attack_settings(attack)
            reduced = c.get("max_iters", 10_000) < 10_000 or c.get("binary_search_steps", 9) < 9 or c.get("lr", 0.01) != 0.01
            cw_rows.append(f"{attack.display}: {self.cw_budget(attack)} "
                           f"from c₀ = {c.get('initial_const', 1e-3):g}, Adam lr {c.get('lr', 0.01):g}"
                           + (" (this preset's reduced budget, not the authors')" if reduced else ""))
        eps = s.get("eps", {})
        eps_text = ", ".join(f"{a.display} {eps[a]:g}" for a in TABLE2_ATTACKS if eps.get(a) is not None) or "?"
        train = [(self.records.get(schema.train_cell(self.depths[0], o)) or {}) for o in OBJECTIVES]
        model = (train[0].get("config", {}) or {}).get("model", {}) if train else {}
        augment = model.get("augment", "?")
        augment_text = {False: "none", True: "resize (40×40 bilinear zoom, then random 32×32 crop)"}.get(
            augment, f"`{augment}`") if isinstance(augment, (bool, str)) else "?"
        lr_text = (f"momentum SGD, lr {model.get('lr_values')} at steps {model.get('lr_boundaries')}, "
                   f"{model.get('steps')} steps, batch {model.get('batch_size')}, "
                   f"{model.get('precision', 'float32')} arithmetic" if model else "?")
        rows = [
            ["JSMA saliency map and target",
             f"{mode_text}, `{jsma['targets']}` target, ≤ {jsma.get('max_iters', '?')} iterations, θ = "
             f"{theta if theta is not None else '?'}"
             + ("; a pixel may be chosen again until it saturates" if jsma["mode"] == "single" else ""),
             "single-feature map, least-likely target (argmin softmax), 100 iterations, pixels reused until "
             "saturated, θ = the sweep's ε (`attacks/jsma.py` 60-120, `test_adv.py` 54, 134-144)"],
            ["C&W and C&W-hc budget and initial constant", "; ".join(cw_rows),
             "c₀ = 1.0, 9 binary-search steps, κ 0 / 10, lr 0.01; C&W-hc 10 000 iterations, the published C&W "
             "call `max_iterations=10` (appendix B.2 says 10 000) (`test_adv.py` 358-365)"],
        ]
        for kappa in s.get("cwwb_kappas", [0.0, 5.0]):
            w = self.cwwb_settings(kappa)

            def get(key, default, w=w):
                value = w.get(key)
                return default if value is None else value

            bss, iters, c0 = get("binary_search_steps", "?"), get("max_iters", "?"), get("initial_const", 1.0)
            p1 = (get("phase1_binary_search_steps", bss), get("phase1_max_iters", iters),
                  get("phase1_initial_const", c0))
            official = ("phase 1 c₀ = 1, 3 × 5 000; phase 2 c₀ = 1, 8 × 10 000 (`test_adv.py` 368-382)" if kappa == 0
                        else "phase 1 c₀ = 10, 3 × 5 000; phase 2 c₀ = 100, 9 × 10 000 (`test_adv.py` 384-397)")
            rows.append([f"C&W-wb phases, κ = {kappa:g}",
                         f"phase 1 {p1[0]} × {p1[1]} from c₀ = {p1[2]:g}; phase 2 {bss} × {iters} from c₀ = {c0:g}; "
                         f"Adam lr {get('lr', 0.01):g}", official])
        w0 = self.cwwb_settings(0.0)
        l2_from = w0.get("l2_from") or "clean"
        rows += [
            ["C&W-wb phase-2 L2 reference",
             "the phase-1 image" if l2_from == "phase1" else "the clean image (`l2_from=\"clean\"`)",
             "the phase-1 image x₁ (phase 2 starts at and is measured from x₁) (`carliniL2_specific.py` 104-105, "
             "206; `test_adv.py` 424, 436)"],
            ["C&W-wb attack bank and η",
             f"{w0.get('attack_bank_size', '?')} training features per class drawn from the detector's bank; η from "
             f"that bank", "100 points per class drawn from the 1 000-per-class bank; η = median over the class's "
             "training points of KD against the 100-point bank, self-kernels kept (`select_kernel_for_attack.m` "
             "3-12, `median_for_attack.m` 13-30)"],
            ["Table 3 ratio, success and distortion",
             "ratio f2 > 0 on the attack bank (official) and on the full bank with leave-one-out η (ours, "
             "stricter); success and distortion over clean-correct inputs whose attack fully succeeded on the "
             "attack bank when the cells record it",
             "ratio on the attack bank; success = target reached and f2 ≤ 0 on the attack bank; distortion = "
             "mean over successful, clean-correct inputs (`carliniL2_specific.py` 280-287, `test_adv.py` 488-499)"],
            ["Table 2 ε (L∞ budget / JSMA θ)", eps_text,
             "sweep ε = 0.02k + 0.02 (`test_adv.py` 596-597); the AUCs at ε = 0.16 (`auc_of_roc_RCE.m` 7, "
             "`eps_round = 8`). Distortion matching: the paper's BIM / ILCM distortions (6.80 / 6.57) correspond "
             "to ε ≈ 0.04, FGSM's 26.9 to ε ≈ 0.14, JSMA's 12.1 to θ ≈ 0.02 (measured, `docs/protocol.md`)"],
            ["Table 2 distortion",
             "mean RMS over **all** attacked images (the official print), the counted-pairs mean beside it",
             "`np.mean(L2_distance)` over all attacked images, no success filter (`test_adv.py` 653)"],
            ["Table 2 counting filter", "clean classified correctly and adversarial misclassified",
             "the same (`auc_of_roc_RCE.m` 39-48)"],
            ["AUC ties", "ties count ½ (standard AUC); the AUC.m rule beside it where the cells record it",
             "every clean/adversarial tie counts 0: P(clean > adversarial) (`Matlab_scripts/AUC.m` 2-17, "
             "`auc_of_roc_RCE.m` 74-86)"],
            ["ILCM loss", "textbook cross-entropy to the least-likely class, 10 steps of ε/10",
             "target one-hot with on/off values +0.5 / −0.5; TF's gradient makes it CE + 0.5 Σ logits, "
             "measured indistinguishable from textbook (`attacks/tgsm.py` 31-51, `test_adv.py` 129-132)"],
            ["FGSM / BIM label", "the true label", "argmax of the prediction (`attacks/fgsm.py` 28-45); equal on "
             "the clean-correct inputs the counting filter keeps"],
            ["C&W targets", "uniform random class ≠ true label, seeded per image",
             "uniform random class ≠ true label, unseeded (`test_adv.py` 412-417)"],
            ["CIFAR-10 augmentation",
             augment_text if self.dataset == Dataset.CIFAR10 else "none (MNIST)",
             "zero-pad to 36×36, random 32×32 crop, random horizontal flip (`cifar_input.py` 50-54)"],
            [f"Training schedule (ResNet-{self.depths[0]})", lr_text, "the paper: 20 000 (MNIST) / 90 000 (CIFAR-10) steps"],
        ]
        d.table(["choice", "this run", "authors' code"], rows)
        d.p("Choices that are ours (no counterpart in the authors' code): confidence is ranked by its log-odds "
            "(same order as F(x)_ŷ, no float32 ties at 1.0); K-density is scored against the *predicted* class "
            f"with σ² = 1/0.26 (CE) and 0.1/0.26 (RCE) on {s.get('kd_per_class', '?')} random training features "
            f"per class; detection thresholds at {100 * s.get('fpr', 0.05):g} % FPR on {s.get('calibration_n', '?')} "
            "held-out clean test images; bootstrap intervals over the counted pairs; the worst-case adaptive "
            "evaluation.")

    def reading_guide(self):
        s = self.settings
        n = s.get("n_attack", {})
        cw = s.get("attack_settings", {}).get("cw", {})
        steps = [self.res(schema.train_cell(self.depths[0], o)) for o in OBJECTIVES]
        steps_text = ", ".join(f"{r['steps']}" for r in steps if r) or "?"
        paper_steps = "20 000" if self.dataset == "mnist" else "90 000"
        self.doc.h(2, "How to read this report")
        items = [
            "Every number in the *ours* columns was measured by this run and is stored with its config, "
            "seed, package version, git commit, device and wall time in `cells/<name>.json`. Numbers in "
            "the *paper* columns are transcribed from the paper (Tables 1–4, appendix Tables 1–2).",
            f"Scale of this run: ResNet-{self.depths[0]} trained for {steps_text} steps (paper: {paper_steps}); "
            f"{n.get('fgsm', '?')}/{n.get('bim', '?')}/{n.get('ilcm', '?')} attacked test images for FGSM/BIM/ILCM, "
            f"{n.get('jsma', '?')} for JSMA, "
            + (f"{n.get('cw', '?')} for C&W and C&W-hc" if n.get('cw') == n.get('cw-hc') else
               f"{n.get('cw', '?')} for C&W and {n.get('cw-hc', '?')} for C&W-hc") + " (paper: 1 000 each); C&W budget "
            f"{cw.get('binary_search_steps', '?')} binary-search steps × {cw.get('max_iters', '?')} iterations "
            f"from c = {cw.get('initial_const', '?')}, Adam lr {cw.get('lr', 0.01)} (paper: 9 × 10 000, lr 0.01; the "
            f"authors' script starts at c = 1). Every other open choice: the *Protocol* section.",
            "AUC-scores follow the paper: normal inputs are the positive class, higher score = more normal, "
            "and only pairs whose clean image is classified correctly *and* whose adversarial twin is "
            "misclassified are counted (*n counted*). Brackets give a 95 % bootstrap interval over those "
            "pairs: with a few dozen pairs an AUC is uncertain by several points, so compare CE and RCE by "
            "whether the intervals separate, not by the last digit.",
            "What the numbers can show at this scale: the *direction* of the paper's effects (RCE vs CE on "
            "non-ME and K-density AUC, C&W-wb needing larger distortions against RCE). What they cannot "
            "show: the paper's digits. Short training leaves higher test errors (Table 1); reduced attack "
            "budgets find larger, less minimal perturbations and fail more often (failed attacks leave the "
            "counted set); K-density uses the paper's bandwidths, tuned for fully trained models.",
            "Distortion is sqrt(mean((x* − x)²)) on the 0–255 scale; Table 2 averages it over all attacked images "
            "(as the authors' script prints it) with the counted-pairs mean beside it. "
            "Confidence is ranked by its log-odds (identical ranking to F(x)_ŷ, but no float32 ties at 1.0).",
            "Seconds per example (appendix Table 1) are wall-clock times of this run's budgets on this "
            "device; the paper's are for full budgets on a P100 GPU. They are not comparable in absolute "
            "terms; ratios between attacks are.",
        ]
        self.doc.bullets(items)

    def summary(self):
        rows, effects = [], []

        def effect(metric, aucs):
            """(metric, wins, ties, compared, CE mean, RCE mean) over the attacks whose AUC both models have."""
            aucs = [a for a in aucs if all(a.get(o) is not None for o in OBJECTIVES)]
            if aucs:
                effects.append((metric, sum(a[Objective.RCE] > a[Objective.CE] for a in aucs),
                                sum(a[Objective.RCE] == a[Objective.CE] for a in aucs), len(aucs),
                                np.mean([a[Objective.CE] for a in aucs]), np.mean([a[Objective.RCE] for a in aucs])))

        for metric in METRICS:
            cells = [{o: self.res(schema.table2_cell(attack, o)) for o in OBJECTIVES} for attack in TABLE2_ATTACKS]
            effect(metric, [{o: (v[schema.AUC].get(metric) if v is not None else None) for o, v in r.items()}
                            for r in cells])
        for metric in schema.BASELINES:  # beyond the paper: the baselines on the same pairs, where computed
            r = {o: self.res(schema.baselines_cell(o)) for o in OBJECTIVES}
            if any(v is None for v in r.values()):
                continue
            effect(metric, [{o: r[o][schema.ATTACKS_BLOCK].get(attack, {}).get(schema.AUC, {}).get(metric)
                             for o in OBJECTIVES} for attack in TABLE2_ATTACKS])
        if not effects:
            return
        self.doc.h(2, "Summary")
        lines = []
        for metric, wins, ties, compared, ce, rce in effects:
            tie_text = f", equal for {ties}" if ties else ""
            label = f"{metric.display} (baseline, see *Baselines*)" if metric in schema.BASELINES else metric.display
            lines.append(f"{label}: mean AUC over the {compared} attacks with counted pairs for both "
                         f"models {100 * ce:.1f} (CE) vs {100 * rce:.1f} (RCE); RCE higher for {wins}{tie_text}.")
        self.doc.bullets(lines)

    def table1(self):
        rows = []
        for which in (0, 1):
            for obj in OBJECTIVES:
                r = self.res(schema.train_cell(self.depths[which], obj))
                if r is None:
                    continue
                ref = paper.TABLE1.get((self.dataset, {0: 32, 1: 56}[which], obj))
                rows.append([self.model(which, obj), r["steps"], _f(r["test_error"], 2, 100),
                             "–" if ref is None else f"{ref:.2f}", _f(r.get("train_seconds"), 0)])
        self.doc.h(2, "Table 1 — test error (%)")
        self.doc.table(["model", "training steps", "ours", "paper", "training time (s)"], rows)
        if self.depths != [32, 56]:
            self.doc.p(f"*(This preset trains depths {self.depths[0]} and {self.depths[1]}; the paper column "
                       f"is ResNet-32 / ResNet-56.)*")

    def table2(self):
        d = self.doc
        d.h(2, "Table 2 — oblivious attacks: distortion and AUC-scores (10⁻²)")
        d.p("Each cell: ours [95 % bootstrap interval] and, in parentheses, the paper. "
            "ε is the L∞ budget (FGSM/BIM/ILCM) or JSMA's per-feature offset θ, in [0, 1] units. *Distortion*: "
            "mean over all attacked images, as the authors' script prints it (`test_adv.py` 653); *counted*: the "
            "mean over the counted pairs only. AUCs count a clean/adversarial tie as ½ (see *AUC tie rule*).")
        paper_rows = paper.TABLE2.get(self.dataset, {})
        rows, extra, ties = [], [], []
        averages = {o: {"distortion": [], "counted": [], **{m: [] for m in METRICS}} for o in OBJECTIVES}
        for attack in TABLE2_ATTACKS:
            for obj in OBJECTIVES:
                r = self.res(schema.table2_cell(attack, obj))
                if r is None:
                    continue
                ref = paper_rows.get((attack, obj))
                eps = r.get("eps")
                dist_all = r.get("distortion_all")
                row = [attack.display, obj.display, "–" if eps is None else f"{eps:g}", f"{r['n']} ({r['n_counted']})",
                       f"{_f(dist_all, 2)} ({ref[0]:.2f})" if ref else _f(dist_all, 2), _f(r["distortion"], 2)]
                for i, metric in enumerate(METRICS):
                    row.append(_auc_text(r, metric) + (f" ({ref[1 + i]:.1f})" if ref else ""))
                    if r[schema.AUC].get(metric) is not None:
                        averages[obj][metric].append(r[schema.AUC][metric])
                if dist_all is not None:
                    averages[obj]["distortion"].append(dist_all)
                if r["distortion"] is not None:
                    averages[obj]["counted"].append(r["distortion"])
                rows.append(row)
                official = r.get(schema.AUC_OFFICIAL_TIES) or {}
                ties.append([attack.display, obj.display] + [
                    f"{_f(r[schema.AUC].get(m), 1, 100)} / {_f(official.get(m), 1, 100)}" for m in TIE_METRICS])
                extra.append([attack.display, obj.display, _f(r.get("attack_success_rate"), 1, 100),
                              _f(r.get("adversarial_accuracy"), 1, 100)]
                             + [_f(r[schema.DETECTION_RATE].get(m), 1, 100) for m in METRICS]
                             + [_f(r[schema.ROBUST_ACCURACY].get(m), 1, 100) for m in METRICS])
        for obj in OBJECTIVES:
            a = averages[obj]
            if not a["distortion"]:
                continue
            ref = paper_rows.get(("average", obj))
            row = ["Average", obj.display, "", "", f"{np.mean(a['distortion']):.2f}" + (f" ({ref[0]:.2f})" if ref else ""),
                   f"{np.mean(a['counted']):.2f}" if a["counted"] else "–"]
            for i, metric in enumerate(METRICS):
                row.append((f"{100 * np.mean(a[metric]):.1f}" if a[metric] else "–") + (f" ({ref[1 + i]:.1f})" if ref else ""))
            rows.append(row)
        d.table(["attack", "obj.", "ε / θ", "n (counted)", "distortion, all (paper)", "distortion, counted",
                 "Confidence", "non-ME", "K-density"], rows)
        d.h(3, "AUC tie rule")
        if any(" / –" not in cell for row in ties for cell in row[2:]):
            d.p("Each cell: AUC (10⁻²) with ties = ½ (ours, the table above) / with the authors' `AUC.m` rule, "
                "where every clean/adversarial tie counts 0 (`auc_of_roc_RCE.m` 74-86). The two differ only where "
                "scores tie, e.g. saturated confidences or K-density underflow on both sides.")
            d.table(["attack", "obj."] + [f"{m.display}: ½ / AUC.m" for m in TIE_METRICS], ties)
        else:
            d.p("*(The cells of this run do not record the AUC under the authors' `AUC.m` tie rule "
                "(`" + schema.AUC_OFFICIAL_TIES + "`); ties count ½ throughout.)*")
        fpr = self.settings.get("fpr", 0.05)
        d.h(3, f"Beyond the paper: the detectors at {100 * fpr:g} % FPR")
        d.p(f"Thresholds are set on {self.settings.get('calibration_n', '?')} held-out clean test images (never "
            f"attacked) so that {100 * fpr:g} % of them are rejected. *Detected* = counted adversarial examples "
            f"rejected; *robust acc.* = attacked images that are rejected or still classified correctly.")
        d.table(["attack", "obj.", "attack success", "accuracy under attack"]
                + [f"detected: {m.display}" for m in METRICS] + [f"robust acc.: {m.display}" for m in METRICS],
                extra)

    def baselines(self):
        """The Baselines table beside Table 2: LID and Mahalanobis on Table 2's counted pairs."""
        d = self.doc
        d.h(2, "Baselines — LID and Mahalanobis on Table 2's pairs (beyond the paper)")
        results = {o: self.res(schema.baselines_cell(o)) for o in OBJECTIVES}
        present = [r for r in results.values() if r is not None]
        if not present:
            d.p("*(Baselines table: not computed in this run — its `baselines.<obj>` cells are missing, e.g. because "
                "the run predates them. `rcedetect reproduce` on this run folder adds them; they reuse Table 2's "
                "adversarial examples from the cache.)*")
            return
        r0 = present[0]
        prot, fit, fpr = r0["protocol"], r0["fit"], r0.get("fpr", self.settings.get("fpr", 0.05))
        fitting = Attack.coerce(prot["attack"])
        counted_fit = ", ".join(f"{r['fit']['counted']} ({r['objective'].upper()})" for r in present)
        d.p("**RCE's metrics need no adversarial examples at all**: non-ME and K-density are computed from the "
            "trained model and clean training data alone. The supervised baselines below are fitted on adversarial "
            f"examples: **LID** (Ma et al. 2018: maximum-likelihood LID with k = {prot['k']} in minibatches of "
            f"{prot['lid_batch_size']} on every tapped layer's flattened activation, logistic regression) and "
            "**Mahalanobis (LR)** (Lee et al. 2018: closest-class tied-covariance Gaussian score of each layer's "
            f"spatial mean, logistic regression; input preprocessing magnitude {prot['magnitude']:g}"
            + (", i.e. none: the authors' magnitude search is not run" if prot["magnitude"] == 0 else "") + "), "
            f"both fitted on {fitting.display} at ε = {prot['eps']:g} crafted on {fit['attacked']} *training* images "
            f"(counted pairs kept: {counted_fit}) with Gaussian noisy twins of the same L2 distortion, "
            f"Mahalanobis-LR's Gaussians on {prot['n_gaussian']} other training images — never on the test pairs "
            "below. **Mahalanobis (unsup.)**: the closest-class score on the penultimate features, Gaussians from "
            f"the K-density bank ({fit['mahalanobis_bank']} clean training images), thresholded on clean data like "
            "the paper's metrics: it needs no adversarial example either.")
        d.p(f"*Seen*: the fitting attack ({fitting.display}); *unseen*: every other attack. Same adversarial "
            "examples, same counted pairs (clean right, adversarial wrong) and same 95 % bootstrap intervals as "
            f"Table 2, whose K-density column is repeated for comparison; *detected*: counted adversarial examples "
            f"rejected at {100 * fpr:g} % FPR on the same held-out clean calibration images. Every input is scored "
            f"on its own, LID against a fixed reference minibatch of {prot['lid_batch_size']} clean training images "
            "(the authors evaluate on aligned test minibatches, where a query's clean twin is in its reference: "
            "not a deployable detector). An AUC far below 50 means the detector ranks that attack's examples as "
            "*more* normal than clean ones (for a supervised one: it learned signs specific to the fitting attack).")
        rows, means = [], {}
        for attack in TABLE2_ATTACKS:
            for obj in OBJECTIVES:
                r, t2 = results[obj], self.res(schema.table2_cell(attack, obj))
                a = (r or {}).get(schema.ATTACKS_BLOCK, {}).get(attack)
                if a is None:
                    continue
                row = [attack.display, "seen" if a[schema.SEEN] else "unseen", obj.display,
                       f"{a['n']} ({a['n_counted']})"]
                row += [_auc_text(a, m) for m in schema.BASELINES]
                row.append(_auc_text(t2, Metric.KD) if t2 else "–")
                row += [_f(a[schema.DETECTION_RATE].get(m), 1, 100) for m in schema.BASELINES]
                row.append(_f(t2[schema.DETECTION_RATE].get(Metric.KD), 1, 100) if t2 else "–")
                rows.append(row)
                for m in schema.BASELINES:
                    if a[schema.AUC].get(m) is not None:
                        means.setdefault((obj, a[schema.SEEN], m), []).append(a[schema.AUC][m])
                if t2 and t2[schema.AUC].get(Metric.KD) is not None:
                    means.setdefault((obj, a[schema.SEEN], Metric.KD), []).append(t2[schema.AUC][Metric.KD])
        for obj in OBJECTIVES:
            for seen in (True, False):
                if not any((obj, seen, m) in means for m in schema.BASELINES):
                    continue
                rows.append([f"Mean ({'seen' if seen else 'unseen'})", "", obj.display, ""]
                            + [_f(np.mean(means[(obj, seen, m)]) if (obj, seen, m) in means else None, 1, 100)
                               for m in (*schema.BASELINES, Metric.KD)] + [""] * (len(schema.BASELINES) + 1))
        metrics = [m.display for m in schema.BASELINES] + ["K-density (Table 2)"]
        d.table(["attack", "fitting", "obj.", "n (counted)"] + [f"AUC: {m}" for m in metrics]
                + [f"detected: {m}" for m in metrics], rows)

    def table3(self):
        d = self.doc
        d.h(2, "Table 3 and appendix Table 2 — white-box C&W-wb against K-density")
        d.p("*Counted*: clean image classified correctly and C&W-wb reached its target class with margin > κ. "
            "*Ratio f2 > 0 (official, attack bank)*: counted examples whose K-density against the attack's "
            "100-point-per-class bank stays below the target class's median (η of `median_for_attack.m`): the "
            "detector is not fooled (higher = more robust); what the authors' script computes and the paper's "
            "column. *Full bank, leave-one-out*: the same against the detector's full bank with a leave-one-out η "
            "(ours, stricter). *Success (official)*: classifier fooled and f2 ≤ 0 on the attack bank, over the "
            "clean-correct inputs; *full bank*: f2 ≤ 0 on the full bank. Distortion: mean over the clean-correct "
            "inputs whose attack fully succeeded on the attack bank (as `test_adv.py` 488-499 prints it) where the "
            "cells record it, else over the counted examples. Beyond the paper: *rejected at FPR* = counted "
            "examples the K-density detector rejects at its threshold, and the K-density AUC over them.")
        rows = []
        for kappa in self.settings.get("cwwb_kappas", [0.0, 5.0]):
            for obj in OBJECTIVES:
                r = self.res(schema.table3_cell(kappa, obj))
                if r is None:
                    continue
                if kappa == 0:
                    ref = paper.TABLE3.get((self.dataset, obj))
                    ref_ratio, ref_dist = (f"{ref[0]}", f"{ref[1]:.2f}") if ref else ("–", "–")
                else:
                    ref = paper.APPENDIX_TABLE2.get((self.dataset, obj))
                    ref_ratio, ref_dist = (f"{ref}" if ref is not None else "–"), "–"
                # Cells without `success_full_bank_percent` predate the official criterion: their
                # `success_percent` is the full-bank one.
                if "success_full_bank_percent" in r:
                    success, success_full = r.get("success_percent"), r["success_full_bank_percent"]
                else:
                    success, success_full = None, r.get("success_percent")
                dist = r["mean_distortion_official"] if "mean_distortion_official" in r else r["mean_distortion"]
                rows.append([f"κ = {kappa:g}", obj.display, f"{r['n']} ({r['n_counted']})",
                             f"{_f(r.get('ratio_f2_positive_attack_bank_percent'), 0)} ({ref_ratio})",
                             _f(r.get("ratio_f2_positive_percent"), 0),
                             f"{_f(dist, 2)} ({ref_dist})",
                             _f(r.get("classifier_success_percent"), 0), _f(success, 0), _f(success_full, 0),
                             _f(r.get("kd_rejected_percent"), 0), _f(r.get("kd_auc"), 1, 100)])
        d.table(["attack", "obj.", "n (counted)", "Ratio f2>0 (official, attack bank), % (paper)",
                 "ratio f2 > 0, full bank leave-one-out, %", "distortion (paper)", "fooled classifier (%)",
                 "success (official), %", "success (full bank), %", "rejected at FPR (%)", "K-density AUC"], rows)
        self.figure("figure4", "Figure 4. Clean images (top) and C&W-wb examples against CE (middle) and RCE "
                               "(bottom) models; titles: RMS distortion, or \"attack failed\" where "
                               "the attack left the image unchanged).")
        d.p("Paper: " + paper.FIGURE_CLAIMS["figure4"])

    def table4(self):
        d = self.doc
        d.h(2, "Table 4 — black-box: C&W-wb examples of the substitute fed to the target")
        d.p(f"Substitute: ResNet-{self.depths[0]} (its κ = 0 C&W-wb examples of Table 3 that fool it: *fed*); "
            f"target: ResNet-{self.depths[1]} judged by its own K-density detector. Transfer rate: fed examples "
            f"the target misclassifies, among those whose clean image it classifies correctly. AUC over the "
            f"paper's counting filter evaluated on the target (n counted).")
        rows = []
        ref = paper.TABLE4.get(self.dataset, {})
        for target in OBJECTIVES:
            for sub in OBJECTIVES:
                r = self.res(schema.table4_cell(sub, target))
                if r is None:
                    continue
                p_auc = ref.get((target, sub))
                p_text = f"{p_auc:.1f}" if p_auc is not None else (f"> {paper.TABLE4_MNIST_LOWER_BOUND:g}"
                                                                  if self.dataset == "mnist" else "–")
                rows.append([self.model(1, target), self.model(0, sub), f"{r['n_fed']} ({r['n_counted']})",
                             _f(r["transfer_rate_percent"], 0), _f(r["auc"], 1, 100),
                             _f(r.get("adversarial_rejected_percent"), 0), p_text])
        bound = paper.TABLE4_TRANSFER_UPPER_BOUND.get(self.dataset)
        d.table(["target", "substitute", "fed (counted)", "transfer rate (%)", "K-density AUC",
                 "rejected at FPR (%)", "paper AUC"], rows)
        if bound is not None:
            d.p(f"Paper: fewer than {bound:g} % of the C&W-wb examples made the target misclassify on "
                f"{self.dataset.display}.")

    def appendix_table1(self):
        rows = []
        budgets = {
            Attack.FGSM: "1 step", Attack.BIM: "10 steps", Attack.ILCM: "10 steps",
            Attack.JSMA: self.jsma_budget(),
            Attack.CW: self.cw_budget(Attack.CW), Attack.CW_HC: self.cw_budget(Attack.CW_HC),
            Attack.CW_WB: self.cwwb_budget(),
        }
        # The cell that measured each attack's time: Table 2's, and Table 3's kappa-0 run for C&W-wb.
        timed = [(a, lambda o, a=a: schema.table2_cell(a, o)) for a in TABLE2_ATTACKS]
        timed.append((Attack.CW_WB, lambda o: schema.table3_cell(0, o)))
        for attack, cell_name in timed:
            for obj in OBJECTIVES:
                r = self.res(cell_name(obj))
                if r is None:
                    continue
                ref = paper.APPENDIX_TABLE1.get((attack, obj))
                rows.append([attack.display, obj.display, budgets[attack], f"{r['seconds_per_example']:.3g}",
                             f"{ref:.2g}" if ref is not None else "–"])
        self.doc.h(2, "Appendix Table 1 — seconds per adversarial example (measured)")
        provenance = {r["provenance"].get("device") for n, r in self.records.items()
                      if schema.kind(n) == schema.TABLE2}
        self.doc.p(f"Attack wall time of this run divided by the attacked images, on {', '.join(sorted(provenance)) or '?'}, "
                   f"with this run's budgets; paper: P100 GPU, 9 × 10 000 C&W iterations, JSMA ≤ 100 pixels.")
        self.doc.table(["attack", "obj.", "budget (this run)", "ours (s)", "paper (s)"], rows)

    def figure_section(self, title, name, caption):
        """A section with one figure and the paper's claim about it (`paper.FIGURE_CLAIMS[name]`)."""
        self.doc.h(2, title)
        self.figure(name, caption)
        self.doc.p("Paper: " + paper.FIGURE_CLAIMS[name])

    def figures_oblivious(self):
        self.figure_section("Figure 1 (right) — t-SNE of the final hidden features", "figure1",
                            "Figure 1 (right). t-SNE of the final hidden features of clean test images, CE (left) vs RCE (right).")
        self.figure_section("Figure 3 — accuracy on adversarial examples", "figure3",
                            "Figure 3. Classification accuracy on adversarial examples vs the attack budget.")

    def appendix_figures(self):
        self.figure_section("Appendix Figure 1 — error on RAND noise", "appendix_figure1",
                            "Appendix Figure 1. Test error on noisy inputs x + U(−ε, ε).")
        self.figure_section("Appendix Figures 2–3 — K-density of normal, noisy and adversarial inputs", "appendix_figures2_3",
                            "Appendix Figures 2–3. Histograms of log K-density; adversarial examples are the counted pairs of "
                            "Table 2. The x-range is the pooled 1st–99th percentile range widened by 10 % of its span; "
                            "outliers beyond it are drawn in the edge bins and counted in the legend.")
        self.figure_section("Appendix Figure 4 — accuracy under C&W with a fixed c", "appendix_figure4",
                            "Appendix Figure 4. Accuracy under C&W-L2 with one binary-search step at a fixed c.")

    def worst_case(self):
        d = self.doc
        d.h(2, "Beyond the paper — worst-case adaptive evaluation")
        results = [(o, self.res(schema.worst_case_cell(o))) for o in OBJECTIVES]
        results = [(o, r) for o, r in results if r is not None]
        if not results:
            d.p("*(not computed in this run.)*")
            return
        r0 = results[0][1]
        b = r0["budget"]
        cw = b.get("cw", {})
        norms = [nm for nm in (Norm.LINF, Norm.L2) if nm in b["eps"]]
        kinds = {Formulation.coerce(f) for f in b["formulations"]}
        rules = [f.value for f in (Formulation.LOGIT, Formulation.SELECTIVE, Formulation.ORTHOGONAL) if f in kinds]
        parts = ([f"detector-aware PGD ({', '.join(rules)} rule{'s' if len(rules) > 1 else ''})"] if rules else []) \
            + ([f"PGD on f + λ·g (Carlini & Wagner 2017b's sum form, λ ∈ {{{', '.join(f'{v:g}' for v in b['lambdas'])}}})"]
               if Formulation.SUM in kinds else []) \
            + (["C&W-L2 with the detector's hinge (C&W-wb generalised to any score)"] if Formulation.CW_L2 in kinds else []) \
            + (["natural start: the first PGD rule once more, started from the nearest image of the batch that is of "
                "another class, classified correctly and accepted (projected into the ball)"]
               if b.get("natural_start") and rules + (["sum"] if Formulation.SUM in kinds else []) else []) \
            + (["LID and Mahalanobis-LR are attacked through their tapped layers (the same fitted detectors as the "
                "Baselines table, differentiable: `detectors.attackable`)"]
               if any(Metric.coerce(m) in SUPERVISED_METRICS for _, r in results for m in r["detectors"]) else [])
        d.p(f"Classifier + detector attacked end to end (`rcedetect.evaluation.worst_case`), each detector at its "
            f"{100 * r0['fpr']:g} % FPR threshold on held-out clean images, with every formulation of this run's "
            f"budget: {', '.join(f'`{a}`' for a in r0['attacks'])} — {'; '.join(parts)}. An input counts as robust at ε "
            f"only if **no** formulation finds a misclassified, accepted point in its ε-ball; a point found at a "
            f"smaller ε also lies in every larger ball. *Robust accuracy with rejection*: attacked images rejected "
            f"or still classified correctly (%). Budget of every number: n = {r0['n']} images, {b['steps']} PGD "
            f"steps × {b['restarts']} restart(s) per attack and ε, C&W-L2 {cw.get('binary_search_steps', '?')} × "
            f"{cw.get('max_iters', '?')} iterations (lr {cw.get('lr', '?')}, c₀ = {cw.get('initial_const', '?')}), "
            + ("cascaded (each attack only on the inputs the earlier ones left: the same worst case, no per-attack "
               "curves)" if b.get("cascade") else "every attack on every input")
            + "; " + ", ".join(f"{Objective.coerce(o).display} {r['seconds_per_example']:.2f} s per image"
                               for o, r in results) + ".")
        headers = ["obj.", "detector"] + [f"{Norm.coerce(nm).display} ε = {e:g}" for nm in norms for e in b["eps"][nm]]
        rows = []
        for obj, r in results:
            und = r.get("undefended_robust_accuracy", {})
            rows.append([obj.display, "none (classifier alone)"]
                        + [_f(v, 0, 100) for nm in norms for v in und.get(nm, [None] * len(b["eps"][nm]))])
            for metric, e in r["detectors"].items():
                cells = []
                for nm in norms:
                    for v, t in zip(e[schema.ROBUST_ACCURACY][nm], e["tramer"][nm]):
                        cells.append(_f(v, 0, 100) + (" ⚠" if t and t.get("implausible") else ""))
                rows.append([obj.display, Metric.coerce(metric).display] + cells)
        d.table(headers, rows)
        self.figure("adaptive", "Worst-case robust accuracy with rejection vs ε (L∞ top, L2 bottom), CE vs RCE, "
                                "per detector; dotted: the classifier alone.")
        d.p("Minimum distortion to fool classifier + detector, median over the attacked images (pixel units in "
            "[0, 1]): per image the smallest ε of the grid at which some formulation broke it, or C&W-L2's distance "
            "when smaller; *> max* when more than half of the images resisted every radius. *broken*: images broken "
            "at some radius. The L2 median of C&W-L2 alone is the measure of the independent re-evaluation of RCE "
            "(C&W-wb run until the detector's AUC falls to 0.5).")
        rows = []
        for obj, r in results:
            for metric, e in r["detectors"].items():
                md = e["min_distortion"]
                cells = []
                for nm in norms:
                    m = md.get(nm, {})
                    top = max(b["eps"][nm])
                    cells += [_f(m.get("median"), 3) if m.get("median") is not None else f"> {top:g}",
                              _f(m.get("broken_fraction"), 0, 100)]
                cw_median = md.get("cw_l2", {}).get("median")
                cells.append(_f(cw_median, 3) if cw_median is not None or "cw_l2" not in md else "> budget")
                top_first = e["broken_by"][norms[0]][-1]
                best = max(top_first, key=top_first.get) if any(top_first.values()) else "–"
                rows.append([obj.display, Metric.coerce(metric).display] + cells + [f"`{best}`"])
        d.table(["obj.", "detector"] + [h for nm in norms for h in (f"median {Norm.coerce(nm).display}",
                                                                     f"broken ({Norm.coerce(nm).display}, %)")]
                + ["median L2, C&W-L2 alone", f"first to break most at {Norm.coerce(norms[0]).display} ε = "
                   f"{max(b['eps'][norms[0]]):g}"], rows)
        d.p("Gradient-masking checks (after AutoAttack's `checks.py` and Carlini et al. 2019), per detector: "
            "*gradient* — no input with a zero or non-finite detector gradient; *ε* — robust accuracy (each ε "
            "attacked on its own) non-increasing; *steps* — the worst case no weaker than one rule at half the steps; "
            "*restarts* — robust accuracy non-increasing in the restarts; *transfer* — white-box at least as strong "
            "as the detector-oblivious transfer attack (PGD on the classifier alone, judged with the detector); "
            + (f"*large ε* — at L∞ ε = {b['large_eps']:g}{' (the whole box)' if b['large_eps'] >= 1 else ''} the "
               "attacks break ≥ 95 % of the images. " if b.get("large_eps") is not None else "*large ε* — not run. ")
            + "Tolerance: one image; "
            "*n/a*: not run at this budget (one restart: nothing to compare).")
        names = ["gradient"] + [f"{c}.{nm}" for c in ("eps", "steps", "restarts", "transfer") for nm in norms] + ["large_eps"]
        rows = []
        failures = []
        for obj, r in results:
            for metric, e in r["detectors"].items():
                row = [obj.display, Metric.coerce(metric).display]
                for name in names:
                    c = e["checks"].get(name, {"status": "n/a"})
                    row.append(f"**{c['status']}**" if c["status"] == FAIL else c["status"])
                    if c["status"] == FAIL:
                        failures.append(f"{obj.display}, {Metric.coerce(metric).display}, {name}: {c['detail']}")
                rows.append(row)

        def label(name):
            kind, _, nm = name.partition(".")
            return kind.replace("_", " ") + (f" {Norm.coerce(nm).display}" if nm else "")

        d.table(["obj.", "detector"] + [label(n) for n in names], rows)
        if failures:
            d.bullets(failures)
        self.tramer(results, norms)

    def tramer(self, results, norms):
        from ..evaluation.published_robustness import PUBLISHED

        d = self.doc
        d.p("Claim check after Tramèr 2022 (*Detecting adversarial examples is (nearly) as hard as classifying "
            "them*): a detector with robust accuracy-with-rejection R at ε implies an (inefficient) classifier with "
            "robust accuracy R at ε/2. Beside each result with a published reference at a radius ≤ ε/2 (a smaller "
            "ball is easier, so that figure bounds what any classifier reaches at ε/2), the implied figure; ⚠ marks a "
            "result that would beat it, i.e. an implausible one (above and in this table).")
        rows = []
        for obj, r in results:
            for metric, e in r["detectors"].items():
                for nm in norms:
                    for eps, t in zip(r["budget"]["eps"][nm], e["tramer"][nm]):
                        if t and t.get("published"):
                            ref = t["published"]
                            rows.append([obj.display, Metric.coerce(metric).display,
                                         f"{Norm.coerce(nm).display} ε = {eps:g}",
                                         f"{_f(t['implied_robust_accuracy'], 0, 100)} at ε/2 = {t['implied_eps']:g}",
                                         f"{100 * ref['robust_accuracy']:.2f} at {ref['eps']:.4g} ({ref['model']})",
                                         "**implausible**" if t["implausible"] else "plausible"])
        if rows:
            d.table(["obj.", "detector", "result at", "implied classifier (%)", "best published (%)", "verdict"], rows)
        else:
            refs = [p for p in PUBLISHED if p.dataset == self.dataset.value]
            d.p("*No radius of this run's grids has a published reference at or below ε/2* (references for "
                f"{self.dataset.display}: " + ("; ".join(f"{Norm.coerce(p.norm).display} ε = {p.eps:.4g}: {p.robust_accuracy:.2f} %"
                                                          for p in refs) or "none")
                + "), so no result here can be checked against one.")
        d.bullets([f"{Dataset.coerce(p.dataset).display} {Norm.coerce(p.norm).display} ε = {p.eps:.4g}: "
                   f"{p.robust_accuracy:.2f} % — {p.model}; read from {p.source}"
                   for p in PUBLISHED if p.dataset == self.dataset.value])

    def settings_section(self):
        s = self.settings
        self.doc.h(2, "Settings of this run")
        keys = ["dataset", "name", "depths", "train_steps", "train_batch_size", "seed", "kd_per_class", "fpr", "calibration_n",
                "n_attack", "eps", "attack_settings", "fig3_eps", "fig3_n", "fig3_jsma_n", "rand_eps", "rand_n",
                "hist_rand_eps", "tsne_n", "cw_fixed_c", "cw_fixed_n", "cw_fixed_settings", "cwwb_n",
                "cwwb_kappas", "cwwb_settings", "worst_case_n", "worst_case_metrics", "worst_case", "baseline_protocol"]
        self.doc.table(["setting", "value"], [[k, f"`{json.dumps(s[k])}`"] for k in keys if k in s])
        self.doc.p("The choices the paper leaves open are listed in the *Protocol* section (and "
                   "`rcedetect.reproduce.presets`, `docs/protocol.md`). K-density: σ² = 1/0.26 (CE) and 0.1/0.26 (RCE), "
                   f"{s.get('kd_per_class', '?')} random training features per class, scored against the predicted class.")

    def build(self) -> Doc:
        self.header()
        self.sanity()
        self.reading_guide()
        self.protocol()
        self.summary()
        self.table1()
        self.table2()
        self.baselines()
        self.figures_oblivious()
        self.table3()
        self.table4()
        self.appendix_table1()
        self.appendix_figures()
        self.worst_case()
        self.settings_section()
        return self.doc


def render_report(run_dir) -> dict:
    """Write RUN/report.md, RUN/report.html, RUN/checks.json (the sanity checks) and RUN/figures/*.png from
    RUN/run.json and RUN/cells/*.json."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise InputError(f"{run_dir} is not a reproduction run (no run.json): pass the --out folder of "
                         f"'rcedetect reproduce'")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{info_path} is not valid JSON ({exc}): re-run 'rcedetect reproduce' to rewrite it") from exc
    if not isinstance(info, dict):
        raise InputError(f"{info_path} is not a run description: re-run 'rcedetect reproduce' to rewrite it")
    records = CellStore(run_dir).records()
    if not records:
        raise InputError(f"{run_dir}/cells holds no results yet: run 'rcedetect reproduce' first")
    check_records(run_dir, info, records)  # never a table from mismatched runs or weights
    figures = make_figures(records, run_dir / "figures")
    report = _Report(run_dir, info, records, figures)
    doc = report.build()
    title = f"rcedetect reproduction — {info['dataset']} {info['preset']}"
    md_path, html_path, checks_path = run_dir / "report.md", run_dir / "report.html", run_dir / "checks.json"
    atomic_write_bytes(md_path, doc.markdown().encode())
    atomic_write_bytes(html_path, doc.html(run_dir, title).encode())
    atomic_write_bytes(checks_path, (to_json(report.checks) + "\n").encode())
    return {"markdown": md_path, "html": html_path, "checks": checks_path, "figures": figures}
