"""What it costs to reproduce the recipe (stage 1 + stage 2 + AIME evaluation) on each accelerator.

Model: chip-hours = work FLOPs / (chip peak bf16 FLOP/s x efficiency) / 3600; cost = chip-hours x price per
chip-hour. Training work is analytic model FLOPs (model/flops.py: 6N + causal attention) over the tokens trained;
evaluation work is 2N + attention per generated token (decode is memory-bound, so it gets its own, lower efficiency).
Data generation (stage-2 teacher traces, `jax-distill data distill`) comes from a distill_report.json: an API
teacher's dollars as billed (the same on every line), or an open teacher's generated tokens priced like decoding
(2N FLOPs per token at the decode efficiency) on each chip.
Training efficiency (MFU) per chip, in this order: a measured run (its metrics.jsonl MFU, applied to every chip), an
MFU assumed on the command line, else our compiled step-time estimate for that chip's slice times its estimator's
calibration factor, with that calibration's error band (plan/calibration.py), else the default assumed MFU; each
line says which. Costs are per chip-hour, so they do not depend on slice size as long as scaling is linear; the wall
time is reported for a given number of chips.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jax_distill.model.config import ModelConfig
from jax_distill.model.flops import forward_flops_per_token, train_flops_per_token
from jax_distill.plan.topology import CHIPS


@dataclass
class Workload:
    """Tokens to train per stage and tokens to generate for the evaluation."""

    model: ModelConfig
    stages: list[dict[str, Any]]  # [{name, tokens, seq_len}]
    eval_problems: int = 30
    eval_samples: int = 8
    eval_output_tokens: int = 16384  # mean generated tokens per sample (long CoT)
    eval_seq_len: int = 16384
    data: dict[str, Any] | None = None  # data generation, from `data_generation(distill_report)`

    def data_flops(self) -> float:
        """Open teacher: 2 x parameters per generated token (attention over the context left out)."""
        d = self.data or {}
        return 2.0 * (d.get("param_count") or 0) * d.get("generated_tokens", 0) if d.get("kind") == "open" else 0.0

    def train_flops(self) -> float:
        return sum(train_flops_per_token(self.model, s["seq_len"]) * s["tokens"] for s in self.stages)

    def eval_tokens(self) -> int:
        return self.eval_problems * self.eval_samples * self.eval_output_tokens

    def eval_flops(self) -> float:
        # Mean context over a generation is about half its final length.
        return forward_flops_per_token(self.model, self.eval_seq_len // 2) * self.eval_tokens()


@dataclass
class Line:
    chip: str
    pricing: str  # on_demand | spot
    train_chip_hours: float
    eval_chip_hours: float
    cost_usd: float
    wall_hours_on: dict[str, float] = field(default_factory=dict)
    data_chip_hours: float = 0.0  # open teacher: decoding the traces
    data_api_usd: float = 0.0  # API teacher: what the traces were billed
    mfu: float = 0.0  # training MFU used for this chip
    mfu_source: str = ""  # why: "measured --from-run ...", "assumed --mfu", "compiled estimate ... x calibration"
    slice: str | None = None  # the slice the estimate and the fit were compiled for
    fits: bool | None = None  # does the stage fit on that slice (None: not compiled)
    cheapest_fitting: bool = False  # the cheapest line, for its pricing, among those that fit
    mfu_error: float | None = None  # relative error band of a calibrated MFU (the calibration's leave-one-out spread)
    cost_usd_band: tuple[float, float] | None = None  # cost at MFU x (1 + error) .. MFU x (1 - error)
    wall_hours_band: tuple[float, float] | None = None


def load_prices(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "chips" not in data:
        raise ValueError(f"{path}: expected a mapping with 'chips'")
    for chip, row in data["chips"].items():
        for key in ("on_demand", "spot"):
            if not isinstance(row.get(key), (int, float)):
                raise ValueError(f"{path}: chips.{chip}.{key} must be a number (USD per chip-hour)")
        if chip not in CHIPS:
            raise ValueError(f"{path}: unknown chip {chip!r}; known: {sorted(CHIPS)}")
    return data


def measured_mfu(run_dir: str | Path) -> tuple[float, str | None]:
    """Median MFU of a run's metrics.jsonl (after the first logged step) and the device kind from its manifest."""
    from jax_distill.paths import as_path

    run = as_path(run_dir)  # a local run folder or gs://
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    mfus = sorted(r["mfu"] for r in rows[1:] if isinstance(r.get("mfu"), (int, float)))
    if not mfus:
        raise ValueError(f"{run}/metrics.jsonl has no 'mfu' values (CPU runs have no known peak)")
    kind = None
    manifest = run / "manifest.json"
    if manifest.is_file():
        kind = json.loads(manifest.read_text()).get("devices", {}).get("device_kind")
    return mfus[len(mfus) // 2], kind


def data_generation(report_path: str | Path) -> dict[str, Any]:
    """The data-generation line's inputs from a `data distill` report (local or gs://)."""
    from jax_distill.paths import as_path

    rep = json.loads(as_path(report_path).read_text())
    teacher = rep.get("teacher", {})
    return {"report": str(report_path), "kind": teacher.get("kind"), "teacher": teacher.get("model"),
            "api_usd": rep["teacher_cost"]["usd"] if teacher.get("kind") == "api" else 0.0,
            "generated_tokens": rep["tokens"]["teacher_completion"], "param_count": teacher.get("param_count"),
            "traces": rep["samples"]["kept"], "complete": rep.get("complete")}


def estimate(work: Workload, prices: dict[str, Any], *, train_mfu: float = 0.4, decode_mfu: float = 0.05,
             chips_for_wall: int = 64, per_chip_mfu: dict[str, float] | None = None,
             per_chip: dict[str, dict[str, Any]] | None = None, mfu_source: str = "assumed") -> list[Line]:
    """Cost lines for every chip in ``prices`` and both pricings. ``per_chip[name]``: {mfu, reason, topology, fits}
    (plan/calibration.per_chip_mfu) replaces ``train_mfu`` for that chip; ``per_chip_mfu`` is the bare-number form."""
    out = []
    per_chip = dict(per_chip or {})
    for name, mfu in (per_chip_mfu or {}).items():
        per_chip.setdefault(name, {"mfu": mfu, "reason": mfu_source})
    for name, row in prices["chips"].items():
        chip = CHIPS[name]
        pc = per_chip.get(name, {})
        if "mfu" in pc:
            mfu, why = pc["mfu"], pc["reason"]
        else:
            mfu, why = train_mfu, mfu_source + (f"; {pc['reason']}" if pc.get("reason") else "")
        train_h = work.train_flops() / (chip.peak_bf16_flops * mfu) / 3600
        eval_h = work.eval_flops() / (chip.peak_bf16_flops * decode_mfu) / 3600
        data_h = work.data_flops() / (chip.peak_bf16_flops * decode_mfu) / 3600
        api = (work.data or {}).get("api_usd", 0.0)
        err = pc.get("mfu_error") if "mfu" in pc else None
        # Only training runs at the estimated MFU: the band scales its hours, not evaluation's or data generation's.
        hours = [h + eval_h + data_h for h in (train_h / (1 + err), train_h / (1 - err))] if err else None
        for pricing in ("on_demand", "spot"):
            out.append(Line(name, pricing, train_h, eval_h, (train_h + eval_h + data_h) * row[pricing] + api,
                            {str(chips_for_wall): (train_h + eval_h + data_h) / chips_for_wall}, data_h, api,
                            mfu, why, pc.get("topology"), pc.get("fits"), mfu_error=err,
                            cost_usd_band=tuple(h * row[pricing] + api for h in hours) if hours else None,
                            wall_hours_band=tuple(h / chips_for_wall for h in hours) if hours else None))
    for pricing in ("on_demand", "spot"):
        fitting = [ln for ln in out if ln.pricing == pricing and ln.fits]
        if fitting:
            min(fitting, key=lambda ln: ln.cost_usd).cheapest_fitting = True
    return out


def report(work: Workload, lines: list[Line], prices: dict[str, Any], assumptions: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": work.model.preset or "custom",
        "parameters": work.model.resolve().param_count(),
        "stages": work.stages,
        "train_tokens": sum(s["tokens"] for s in work.stages),
        "train_flops": work.train_flops(),
        "eval_tokens": work.eval_tokens(),
        "eval_flops": work.eval_flops(),
        "data_generation": work.data,
        "prices_checked": prices.get("checked"),
        "assumptions": assumptions,
        "lines": [asdict(line) for line in lines],
    }


def table(rep: dict[str, Any]) -> str:
    data = bool(rep.get("data_generation"))
    head = "| data generation (USD) " if data else ""
    rows = [(f"| chip | pricing | train MFU (source) | fits (slice) | train chip-hours | eval chip-hours {head}"
             f"| cost (USD) | wall hours on {next(iter(rep['lines'][0]['wall_hours_on']))} chips |"),
            "|---" * (9 if data else 8) + "|"]
    for ln in sorted(rep["lines"], key=lambda x: x["cost_usd"]):
        wall = next(iter(ln["wall_hours_on"].values()))
        price = (ln["cost_usd"] - ln["data_api_usd"]) / max(1e-12, ln["train_chip_hours"] + ln["eval_chip_hours"]
                                                             + ln["data_chip_hours"])
        gen = f"| {ln['data_api_usd'] + ln['data_chip_hours'] * price:,.2f} " if data else ""
        fits = {True: "yes", False: "no", None: "not compiled"}[ln.get("fits")]
        fits += f" ({ln['slice']})" if ln.get("slice") else ""
        mark = " **cheapest fitting**" if ln.get("cheapest_fitting") else ""
        rows.append(f"| {ln['chip']} | {ln['pricing']} | {ln['mfu']:.0%} ({_short(ln['mfu_source'])}) | {fits} "
                    f"| {ln['train_chip_hours']:,.0f} | {ln['eval_chip_hours']:,.1f} "
                    f"{gen}| {ln['cost_usd']:,.0f}{_band(ln.get('cost_usd_band'), ',.0f')}{mark} "
                    f"| {wall:,.1f}{_band(ln.get('wall_hours_band'), ',.1f')} |")
    return "\n".join(rows)


def _band(band: tuple[float, float] | list[float] | None, fmt: str) -> str:
    return f" ({band[0]:{fmt}}–{band[1]:{fmt}})" if band else ""


def _short(source: str) -> str:
    if source.startswith("compiled estimate"):
        est = source.split("(")[1].split(")")[0] if "(" in source else "estimate"
        return f"compiled {est} x calibration"
    return source.split(" in ")[0] if source.startswith("measured") else source


def plot(rep: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chips = list(dict.fromkeys(ln["chip"] for ln in rep["lines"]))
    by = {(ln["chip"], ln["pricing"]): ln for ln in rep["lines"]}

    def band(key: str, pricing: str, value: str) -> list[list[float]]:
        """matplotlib's yerr: [below, above] per chip (0 where the MFU has no calibrated error)."""
        lo, hi = [], []
        for c in chips:
            ln = by[(c, pricing)]
            mid = ln[value] if value == "cost_usd" else next(iter(ln[value].values()))
            b = ln.get(key) or (mid, mid)
            lo.append(mid - b[0])
            hi.append(b[1] - mid)
        return [lo, hi]

    fig, (ax, wall_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(chips))
    for dx, pricing, label in ((-0.2, "on_demand", "on-demand"), (0.2, "spot", "spot")):
        ax.bar([x + dx for x in xs], [by[(c, pricing)]["cost_usd"] for c in chips], 0.4, label=label,
               yerr=band("cost_usd_band", pricing, "cost_usd"), capsize=3)
    mfu = {ln["chip"]: ln.get("mfu") for ln in rep["lines"]}
    fits = {ln["chip"]: {True: "fits", False: "does not fit", None: ""}[ln.get("fits")] for ln in rep["lines"]}
    labels = [f"{c}\nMFU {mfu[c]:.0%}\n{fits[c]}" if mfu[c] else c for c in chips]
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("USD")
    ax.set_title(f"Cost: {rep['model']}, {rep['train_tokens'] / 1e9:.2f}B train tokens + eval")
    ax.legend()
    n = next(iter(rep["lines"][0]["wall_hours_on"]))
    wall_ax.bar(list(xs), [next(iter(by[(c, "spot")]["wall_hours_on"].values())) for c in chips], 0.5,
                yerr=band("wall_hours_band", "spot", "wall_hours_on"), capsize=3, color="tab:gray")
    wall_ax.set_xticks(list(xs), labels)
    wall_ax.set_ylabel(f"hours on {n} chips")
    wall_ax.set_title("Wall time (error bars: calibration's leave-one-out spread)")
    fig.tight_layout()
    from jax_distill.paths import as_path

    target = as_path(path)  # local or gs://
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as f:
        fig.savefig(f, dpi=120, format=target.suffix.lstrip(".") or "png")
    plt.close(fig)
    return target
