"""Tables and plots for `distill_quality.py`: per-run series in, results.json/.md and PNGs out.

Knows nothing about training or the teacher: a record is one run's `{"setting", "method", "seed",
"status", "series": {metric: [[step, value], ...]}}` (status "ok", "failed" or "cut").

Dip (issue 20, pre-registered in docs/results.md; `tropd.trainer.dip`): drawdown = lowest eval
accuracy minus the start; recovery steps = from the lowest eval to the first later eval at or
above the start (recovered = how many seeds did; 0 steps when never below); AUC = the mean
accuracy over training (trapezoids over the eval steps).

Collapse (decided before any run): a run collapsed if it failed or logged a non-finite loss, or
if every evaluation in the second half of training scored below half of its own start accuracy.
"Below start" counts the milder outcome: final accuracy under the start accuracy.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tropd.trainer.dip import dip_of

TARGET_GAIN = 0.05  # "steps to target": first eval at >= start + 5 points
PAPER_ABLATION = (  # DESIGN §3's math ablation, in the paper's order
    ("OPD", "opd"),
    ("mask", "mask"),
    ("clip", "clip"),
    ("FKL-all", "fkl_topk"),
    ("FKL-outliers", "tropd"),
    ("+guidance", "tropd_guidance"),
)
RULES = ("tropd", "tropd_surprise", "tropd_support", "tropd_prefix_gate")
LR_SWEEP = (("lr3e-5", "3e-5"), ("default", "1e-4"), ("lr3e-4", "3e-4"))


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = _finite(values)
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.pstdev(vals) if len(vals) > 1 else 0.0


def collapsed(record: dict[str, Any]) -> bool:
    """The collapse rule of the module docstring."""
    if record["status"] == "failed":
        return True
    if any(not math.isfinite(v) for _, v in record["series"]["loss/total"]):
        return True
    acc = record["series"]["eval/accuracy"]
    if not acc:
        return True
    start, last_step = acc[0][1], acc[-1][0]
    late = [a for s, a in acc if s >= last_step / 2 and s > 0]
    return bool(late) and all(a < 0.5 * start for a in late)


def _steps_to_target(acc: list[list[float]]) -> float | None:
    start = acc[0][1]
    return next((s for s, a in acc[1:] if a >= start + TARGET_GAIN - 1e-9), None)


def _p99(values: list[float]) -> float:
    ordered = sorted(_finite(values))
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def cell_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary of one (setting, method) over its seeds."""
    done = [r for r in runs if r["status"] != "cut" and r["series"]["eval/accuracy"]]
    accs = [r["series"]["eval/accuracy"] for r in done]
    reached = [t for t in (_steps_to_target(a) for a in accs) if t is not None]
    grads = [v for r in done for _, v in r["series"]["train/grad_norm"]]
    trust = [v for r in done for _, v in r["series"]["train/trust_fraction"]]
    weight = [v for r in done for _, v in r["series"]["train/outlier_weight"]]
    dips = [dip_of([(s, a) for s, a in acc]) for acc in accs]  # issue 20's dip metrics
    recovered = [d.recovery_steps for d in dips if d.recovery_steps is not None]
    return {
        "seeds": [r["seed"] for r in done],
        "start": _mean_std([a[0][1] for a in accs]),
        "final": _mean_std([a[-1][1] for a in accs]),
        "best": _mean_std([max(x for _, x in a) for a in accs]),
        "finals": [a[-1][1] for a in accs],
        "steps_to_target": statistics.fmean(reached) if reached else None,
        "reached_target": len(reached),
        "collapsed": sum(collapsed(r) for r in done),
        "below_start": sum(a[-1][1] < a[0][1] for a in accs),
        "failed": sum(r["status"] == "failed" for r in done),
        "trust_fraction": statistics.fmean(_finite(trust)) if _finite(trust) else None,
        "outlier_weight": statistics.fmean(_finite(weight)) if _finite(weight) else None,
        "grad_norm_mean": statistics.fmean(_finite(grads)) if _finite(grads) else None,
        "grad_norm_p99": _p99(grads) if grads else None,
        "drawdown": _mean_std([d.drawdown for d in dips]),
        "recovery_steps": statistics.fmean(recovered) if recovered else None,
        "recovered": len(recovered),
        "auc": _mean_std([d.auc for d in dips]),
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        cells.setdefault(r["setting"], {}).setdefault(r["method"], []).append(r)
    return {s: {m: cell_stats(rs) for m, rs in ms.items()} for s, ms in cells.items()}


def _pm(ms: tuple[float, float]) -> str:
    return "-" if not math.isfinite(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def setting_table(setting: str, stats: dict[str, dict[str, Any]], command: str) -> list[str]:
    opd = stats.get("opd", {}).get("final", (float("nan"),))[0]
    lines = [f"### Setting `{setting}`", "", "```", command, "```", ""]
    lines += [
        "| method | seeds | start | final | best | final − OPD | steps to +5 pts (reached) "
        "| collapsed | below start | drawdown | recovery steps (recovered) | AUC "
        "| trust frac | outlier w | grad norm mean | grad norm p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, c in stats.items():
        n = len(c["seeds"])
        delta = c["final"][0] - opd
        lines.append(
            f"| {m} | {n} | {c['start'][0]:.3f} | {_pm(c['final'])} | {_pm(c['best'])} "
            f"| {_num(delta, '+.3f')} | {_num(c['steps_to_target'], '.0f')} "
            f"({c['reached_target']}/{n}) | {c['collapsed']}/{n} | {c['below_start']}/{n} "
            f"| {_pm(c['drawdown'])} | {_recovery(c)} | {c['auc'][0]:.3f} "
            f"| {_num(c['trust_fraction'])} | {_num(c['outlier_weight'])} "
            f"| {_num(c['grad_norm_mean'])} | {_num(c['grad_norm_p99'])} |"
        )
    return [*lines, ""]


def _recovery(c: dict[str, Any]) -> str:
    n = len(c["seeds"])
    return f"{_num(c['recovery_steps'], '.0f')} ({c['recovered']}/{n})"


def _grid(rows: list[str], cols: list[str], cell: Any, head: str) -> list[str]:
    lines = [f"| {head} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    return lines + [f"| {r} | " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]


def cross_tables(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """Outlier mode, weighting rules, lr sweep, surprise sensitivity (where the cells exist)."""

    def final(setting: str, method: str) -> str:
        c = summary.get(setting, {}).get(method)
        if c is None or not c["seeds"]:
            return "not run"
        return f"{_pm(c['final'])} ({c['collapsed']} coll.)"

    settings = list(summary)
    out = {
        "outlier_mode": _grid(settings, ["opd", "tropd", "tropd_reward"], final, "setting"),
        "weighting_rules": _grid(settings, ["opd", *RULES], final, "setting"),
        "lr_sweep": _grid(
            [m for m in summary.get("lr3e-5", {}) if m in summary.get("lr3e-4", {})],
            [s for s, _ in LR_SWEEP if s in summary],
            lambda method, setting: final(setting, method),
            "method \\ setting",
        ),
    }
    sens = ["tropd_surprise", "surprise_c1", "surprise_c4", "surprise_s0_2", "surprise_s0_8"]
    out["surprise_sensitivity"] = _grid(
        [m for m in sens if m in summary.get("default", {})],
        ["default"],
        lambda variant, setting: final(setting, variant),
        "variant (c, s0 default 2, 4)",
    )
    out["never_worse_than_opd"] = never_worse(summary)
    out["dip"] = dip_table(summary)
    return out


def dip_table(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Issue 20: every method x setting, "final / drawdown / recovery steps (recovered)"."""
    methods = list(dict.fromkeys(m for cells in summary.values() for m in cells))

    def cell(method: str, setting: str) -> str:
        c = summary[setting].get(method)
        if c is None or not c["seeds"]:
            return "not run"
        return (f"{c['final'][0]:.3f} / {c['drawdown'][0]:+.3f} / {_recovery(c)} "
                f"/ AUC {c['auc'][0]:.3f}")  # fmt: skip

    return _grid(methods, list(summary), cell, "method \\ setting (final / drawdown / rec. / AUC)")


def never_worse(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Per rule: the settings where its mean final accuracy is below OPD's (issue 8's test)."""
    lines = []
    for rule in RULES:
        worse, missing = [], []
        for setting, cells in summary.items():
            if rule not in cells or "opd" not in cells:
                missing.append(setting)
            elif cells[rule]["final"][0] < cells["opd"]["final"][0]:
                gap = cells[rule]["final"][0] - cells["opd"]["final"][0]
                worse.append(f"{setting} ({gap:+.3f})")
        verdict = "never worse than OPD" if not worse else "worse than OPD in " + ", ".join(worse)
        if missing:
            verdict += "; not run in " + ", ".join(missing)
        lines.append(f"* `{rule}`: {verdict}")
    return lines


def _band_plot(path: Path, by_method: dict[str, list[dict]], key: str, title: str) -> Path | None:
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot()
    drawn = False
    for i, (method, runs) in enumerate(by_method.items()):
        series = [dict(map(tuple, r["series"][key])) for r in runs if r["series"][key]]
        if not series:
            continue
        steps = sorted(set.intersection(*(set(s) for s in series)))
        vals = [[s[t] for s in series] for t in steps]
        mean = [statistics.fmean(_finite(v) or [float("nan")]) for v in vals]
        std = [statistics.pstdev(_finite(v)) if len(_finite(v)) > 1 else 0.0 for v in vals]
        if key != "eval/accuracy" and len(steps) > 30:  # noisy per-step series: moving average
            mean = _moving_average(mean, 5)
            std = _moving_average(std, 5)
        color = f"C{i}" if len(by_method) <= 10 else _tab20(i)
        ax.plot(steps, mean, label=method, color=color, lw=1.4)
        lo = [m - s for m, s in zip(mean, std, strict=True)]
        hi = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(steps, lo, hi, color=color, alpha=0.12)
        drawn = True
    if not drawn:
        return None
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _moving_average(values: list[float], span: int) -> list[float]:
    out = []
    for i in range(len(values)):
        window = _finite(values[max(0, i - span + 1) : i + 1])
        out.append(statistics.fmean(window) if window else float("nan"))
    return out


def _tab20(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


def ablation_plot(path: Path, cells: dict[str, dict[str, Any]]) -> Path | None:
    bars = [(label, cells[m]) for label, m in PAPER_ABLATION if m in cells]
    if not bars:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    xs = range(len(bars))
    ax.bar(
        xs,
        [c["final"][0] for _, c in bars],
        yerr=[c["final"][1] for _, c in bars],
        color="C0",
        alpha=0.8,
        capsize=4,
    )
    start = statistics.fmean(c["start"][0] for _, c in bars)
    ax.axhline(start, color="k", ls="--", lw=1, label=f"student start {start:.3f}")
    ax.set_xticks(list(xs), [label for label, _ in bars])
    ax.set_ylabel("final eval accuracy (mean ± std over seeds)")
    ax.set_title("Ablation in the paper's order (default world)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _strict(obj: Any) -> Any:
    """NaN/inf -> None, so results.json is strict JSON (other readers reject NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    return obj


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _markdown(summary: dict, meta: dict, records: list[dict], out: Path) -> str:
    lines = ["# Distillation quality benchmark (generated)", ""]
    lines += [
        f"Command: `{meta['command']}`; wall time {meta['wall_s'] / 60:.1f} min; seeds "
        f"{meta['seeds']}; best default-world baseline: `{meta['best_baseline']}`.",
        "",
    ]
    lines += [__doc__.split("\n\n")[-1].strip(), ""]
    base = meta["command"].split(" --")[0] + (" --quick" if meta["quick"] else "")
    for setting, cells in summary.items():
        methods = " ".join(cells)
        cmd = f"{base} --settings {setting} --methods {methods} --seeds " + " ".join(
            str(s) for s in meta["seeds"]
        )
        if setting != "default":
            cmd += f" --baseline {meta['best_baseline']}"
        lines += setting_table(setting, cells, cmd)
        for key in ("accuracy", "grad_norm", "trust_fraction"):
            png = out / f"{key}_{setting}.png"
            if png.exists():
                lines += [f"![{key} {setting}]({png.name})", ""]
    for name, table in cross_tables(summary).items():
        lines += [f"### {name.replace('_', ' ')}", "", *table, ""]
    cut = [f"{r['setting']}/{r['method']}/seed{r['seed']}" for r in records if r["status"] == "cut"]
    failed = [
        f"{r['setting']}/{r['method']}/seed{r['seed']}: {r['error']}"
        for r in records
        if r["status"] == "failed"
    ]
    lines += ["### cut by the deadline", "", ", ".join(cut) or "none", ""]
    lines += ["### failed runs", "", *(f"* {f}" for f in failed or ["none"]), ""]
    return "\n".join(lines)


def write_report(records: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> list[Path]:
    """results.json, results.md and the PNGs into `out`; returns the paths written."""
    summary = summarise(records)
    paths = []
    for setting in summary:
        by_method: dict[str, list[dict]] = {}
        for r in records:
            if r["setting"] == setting and r["status"] != "cut":
                by_method.setdefault(r["method"], []).append(r)
        for key, name in (
            ("eval/accuracy", "accuracy"),
            ("train/grad_norm", "grad_norm"),
            ("train/trust_fraction", "trust_fraction"),
        ):
            title = f"{key} ({setting}; mean ± std over seeds)"
            p = _band_plot(out / f"{name}_{setting}.png", by_method, key, title)
            paths += [p] if p else []
    if "default" in summary:
        p = ablation_plot(out / "ablation_default.png", summary["default"])
        paths += [p] if p else []
    payload = {
        "meta": meta,
        "summary": summary,
        "cross_tables": cross_tables(summary),
        "runs": records,
    }
    (out / "results.json").write_text(json.dumps(_strict(payload), indent=1, default=str))
    (out / "results.md").write_text(_markdown(summary, meta, records, out))
    return [out / "results.json", out / "results.md", *paths]
