"""`rcedetect report RUN`: a Markdown + HTML report rendered from the run's JSON only.

    render_report(run_dir) -> {"markdown": RUN/report.md, "html": RUN/report.html, "figures": {...}}

Our tables side by side with the paper's numbers (`paper_values`), the figures (`figures`), the
settings, and what the numbers mean and do not mean at the run's scale. AUCs carry a 95 % bootstrap
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
from ..checkpoints import atomic_write_bytes
from ..errors import InputError
from . import paper_values as paper
from ..names import Attack, Dataset, Metric, Objective
from . import schema
from .figures import make_figures
from .schema import METRICS, OBJECTIVES, TABLE2_ATTACKS
from .store import CellStore

BOOTSTRAP = 500


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
            f"{n.get('cw', '?')} for C&W and C&W-hc (paper: 1 000 each); C&W budget "
            f"{cw.get('binary_search_steps', '?')} binary-search steps × {cw.get('max_iters', '?')} iterations "
            f"from c = {cw.get('initial_const', '?')}, Adam lr {cw.get('lr', 0.01)} (paper: 9 × 10 000 from 10⁻³, lr 0.01).",
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
            "Distortion is sqrt(mean((x* − x)²)) on the 0–255 scale, averaged over the counted pairs. "
            "Confidence is ranked by its log-odds (identical ranking to F(x)_ŷ, but no float32 ties at 1.0).",
            "Seconds per example (appendix Table 1) are wall-clock times of this run's budgets on this "
            "device; the paper's are for full budgets on a P100 GPU. They are not comparable in absolute "
            "terms; ratios between attacks are.",
        ]
        self.doc.bullets(items)

    def summary(self):
        rows, effects = [], []
        for metric in METRICS:
            values = {o: [] for o in OBJECTIVES}
            wins = ties = compared = 0
            for attack in TABLE2_ATTACKS:
                r = {o: self.res(schema.table2_cell(attack, o)) for o in OBJECTIVES}
                if any(v is None or v[schema.AUC].get(metric) is None for v in r.values()):
                    continue
                auc = {o: r[o][schema.AUC][metric] for o in OBJECTIVES}
                compared += 1
                wins += auc[Objective.RCE] > auc[Objective.CE]
                ties += auc[Objective.RCE] == auc[Objective.CE]
                for o in OBJECTIVES:
                    values[o].append(auc[o])
            if compared:
                effects.append((metric, wins, ties, compared, np.mean(values[Objective.CE]),
                                np.mean(values[Objective.RCE])))
        if not effects:
            return
        self.doc.h(2, "Summary")
        lines = []
        for metric, wins, ties, compared, ce, rce in effects:
            tie_text = f", equal for {ties}" if ties else ""
            lines.append(f"{metric.display}: mean AUC over the {compared} attacks with counted pairs for both "
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
            "ε is the L∞ budget (FGSM/BIM/ILCM) or JSMA's per-feature offset θ, in [0, 1] units.")
        paper_rows = paper.TABLE2.get(self.dataset, {})
        rows, extra, averages = [], [], {o: {"distortion": [], **{m: [] for m in METRICS}} for o in OBJECTIVES}
        for attack in TABLE2_ATTACKS:
            for obj in OBJECTIVES:
                r = self.res(schema.table2_cell(attack, obj))
                if r is None:
                    continue
                ref = paper_rows.get((attack, obj))
                eps = r.get("eps")
                row = [attack.display, obj.display, "–" if eps is None else f"{eps:g}", f"{r['n']} ({r['n_counted']})",
                       f"{_f(r['distortion'], 2)} ({ref[0]:.2f})" if ref else _f(r["distortion"], 2)]
                for i, metric in enumerate(METRICS):
                    row.append(_auc_text(r, metric) + (f" ({ref[1 + i]:.1f})" if ref else ""))
                    if r[schema.AUC].get(metric) is not None:
                        averages[obj][metric].append(r[schema.AUC][metric])
                if r["distortion"] is not None:
                    averages[obj]["distortion"].append(r["distortion"])
                rows.append(row)
                extra.append([attack.display, obj.display, _f(r.get("attack_success_rate"), 1, 100),
                              _f(r.get("adversarial_accuracy"), 1, 100)]
                             + [_f(r[schema.DETECTION_RATE].get(m), 1, 100) for m in METRICS]
                             + [_f(r[schema.ROBUST_ACCURACY].get(m), 1, 100) for m in METRICS])
        for obj in OBJECTIVES:
            a = averages[obj]
            if not a["distortion"]:
                continue
            ref = paper_rows.get(("average", obj))
            row = ["Average", obj.display, "", "", f"{np.mean(a['distortion']):.2f}" + (f" ({ref[0]:.2f})" if ref else "")]
            for i, metric in enumerate(METRICS):
                row.append((f"{100 * np.mean(a[metric]):.1f}" if a[metric] else "–") + (f" ({ref[1 + i]:.1f})" if ref else ""))
            rows.append(row)
        d.table(["attack", "obj.", "ε / θ", "n (counted)", "distortion", "Confidence", "non-ME", "K-density"], rows)
        fpr = self.settings.get("fpr", 0.05)
        d.h(3, f"Beyond the paper: the detectors at {100 * fpr:g} % FPR")
        d.p(f"Thresholds are set on {self.settings.get('calibration_n', '?')} held-out clean test images (never "
            f"attacked) so that {100 * fpr:g} % of them are rejected. *Detected* = counted adversarial examples "
            f"rejected; *robust acc.* = attacked images that are rejected or still classified correctly.")
        d.table(["attack", "obj.", "attack success", "accuracy under attack"]
                + [f"detected: {m.display}" for m in METRICS] + [f"robust acc.: {m.display}" for m in METRICS],
                extra)

    def table3(self):
        d = self.doc
        d.h(2, "Table 3 and appendix Table 2 — white-box C&W-wb against K-density")
        d.p("*Counted*: clean image classified correctly and C&W-wb reached its target class with margin > κ. "
            "*Ratio f2 > 0*: counted examples whose K-density stays below the median K-density of the target "
            "class's training points (the detector is not fooled; higher = more robust); the paper's metric. "
            "Distortion over the counted examples. Beyond the paper: *rejected at FPR* = counted examples the "
            "K-density detector rejects at its threshold, and the K-density AUC over them.")
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
                rows.append([f"κ = {kappa:g}", obj.display, f"{r['n']} ({r['n_counted']})",
                             f"{_f(r['ratio_f2_positive_percent'], 0)} ({ref_ratio})",
                             f"{_f(r['mean_distortion'], 2)} ({ref_dist})",
                             _f(r.get("classifier_success_percent"), 0), _f(r.get("success_percent"), 0),
                             _f(r.get("kd_rejected_percent"), 0), _f(r.get("kd_auc"), 1, 100)])
        d.table(["attack", "obj.", "n (counted)", "ratio f2 > 0, % (paper)", "distortion (paper)",
                 "fooled classifier (%)", "fooled both (%)", "rejected at FPR (%)", "K-density AUC"], rows)
        self.figure("figure4", "Figure 4. Clean images (top) and C&W-wb examples against CE (middle) and RCE "
                               "(bottom) models; titles: RMS distortion.")
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
        cw = self.settings.get("attack_settings", {}).get("cw", {})
        wb = self.settings.get("cwwb_settings", {})
        cw_budget = f"{cw.get('binary_search_steps', '?')} × {cw.get('max_iters', '?')}"
        budgets = {
            Attack.FGSM: "1 step", Attack.BIM: "10 steps", Attack.ILCM: "10 steps",
            Attack.JSMA: f"≤ {2 * self.settings.get('attack_settings', {}).get('jsma', {}).get('max_iters', 50)} pixels",
            Attack.CW: cw_budget, Attack.CW_HC: cw_budget,
            Attack.CW_WB: f"2 phases × {wb.get('binary_search_steps', '?')} × {wb.get('max_iters', '?')}",
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
                            "Appendix Figures 2–3. Histograms of log K-density; adversarial examples are the counted pairs of Table 2.")
        self.figure_section("Appendix Figure 4 — accuracy under C&W with a fixed c", "appendix_figure4",
                            "Appendix Figure 4. Accuracy under C&W-L2 with one binary-search step at a fixed c.")

    def adaptive(self):
        d = self.doc
        d.h(2, "Beyond the paper — detector-aware adaptive attack")
        results = [self.res(schema.adaptive_cell(o)) for o in OBJECTIVES]
        if any(r is None for r in results):
            d.p("*(not computed in this run.)*")
            return
        r0 = results[0]
        d.p(f"Detector-aware PGD (`rcedetect.attacks.adaptive_pgd`) against classifier + detector at the "
            f"{100 * r0['fpr']:g} % FPR threshold, worst case over the update rules {', '.join(r0['settings']['methods'])} "
            f"(settings {json.dumps(r0['settings'])}, n = {r0['n']}). Robust accuracy with rejection (%): the "
            f"attacked images that are rejected or still classified correctly (higher = more robust); *none* is "
            f"the plain robust accuracy of the classifier under the same PGD. The paper's white-box attack targets "
            f"K-density only; this is the evaluation a reviewer would ask for today. At ε = 0 the value is the "
            f"fraction of clean images classified correctly or rejected.")
        rows = []
        for obj, r in zip(OBJECTIVES, results):
            rows.append([obj.display, "none (classifier alone)"] + [_f(v, 0, 100) for v in r["undefended_robust_accuracy"]])
            for metric, curve in r[schema.ROBUST_ACCURACY].items():
                rows.append([obj.display, Metric.coerce(metric).display] + [_f(v, 0, 100) for v in curve])
        d.table(["obj.", "detector"] + [f"ε = {e:g}" for e in r0["eps"]], rows)
        self.figure("adaptive", "Robust accuracy with rejection under the detector-aware attack vs ε.")

    def settings_section(self):
        s = self.settings
        self.doc.h(2, "Settings of this run")
        keys = ["dataset", "name", "depths", "train_steps", "train_batch_size", "seed", "kd_per_class", "fpr", "calibration_n",
                "n_attack", "eps", "attack_settings", "fig3_eps", "fig3_n", "fig3_jsma_n", "rand_eps", "rand_n",
                "hist_rand_eps", "tsne_n", "cw_fixed_c", "cw_fixed_n", "cw_fixed_settings", "cwwb_n",
                "cwwb_kappas", "cwwb_settings", "adaptive_eps", "adaptive_n", "adaptive_settings"]
        self.doc.table(["setting", "value"], [[k, f"`{json.dumps(s[k])}`"] for k in keys if k in s])
        self.doc.p("The choices the paper leaves open (ε per dataset, JSMA's θ, grids) are documented in "
                   "`rcedetect.reproduce.presets`. K-density: σ² = 1/0.26 (CE) and 0.1/0.26 (RCE), "
                   f"{s.get('kd_per_class', '?')} random training features per class, scored against the predicted class.")

    def build(self) -> Doc:
        self.header()
        self.reading_guide()
        self.summary()
        self.table1()
        self.table2()
        self.figures_oblivious()
        self.table3()
        self.table4()
        self.appendix_table1()
        self.appendix_figures()
        self.adaptive()
        self.settings_section()
        return self.doc


def render_report(run_dir) -> dict:
    """Write RUN/report.md, RUN/report.html and RUN/figures/*.png from RUN/run.json and RUN/cells/*.json."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise InputError(f"{run_dir} is not a reproduction run (no run.json): pass the --out folder of "
                         f"'rcedetect reproduce'")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{info_path} is not valid JSON ({exc}): re-run 'rcedetect reproduce' to rewrite it") from exc
    records = CellStore(run_dir).records()
    if not records:
        raise InputError(f"{run_dir}/cells holds no results yet: run 'rcedetect reproduce' first")
    figures = make_figures(records, run_dir / "figures")
    doc = _Report(run_dir, info, records, figures).build()
    title = f"rcedetect reproduction — {info['dataset']} {info['preset']}"
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_bytes(md_path, doc.markdown().encode())
    atomic_write_bytes(html_path, doc.html(run_dir, title).encode())
    return {"markdown": md_path, "html": html_path, "figures": figures}
