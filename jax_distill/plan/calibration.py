"""Calibration of the compiled step-time estimates against published training runs, and the per-chip MFU that
`jax-distill cost` uses.

The estimators (:data:`ESTIMATORS`: on TPU libtpu's cost model where it is sane, else our roofline over the
optimized HLO; on GPU our roofline) are rooflines: a real step is slower by launch gaps, pipeline bubbles and unhidden
collectives. Each anchor in ``configs/calibration.yaml`` is a published run (model, batch, sequence, slice)
expressed in our ModelConfig; we compile every estimator that applies on it, and an estimator's efficiency factor is
the geometric mean of published MFU / its estimated MFU over the anchors where it is usable. ``cost`` then uses
estimate x the factor of the estimator that made it, per chip; :func:`leave_one_out` gives each anchor's error with a
factor from the other anchors, so the error is not zero by construction.

Anchor compiles and the per-config estimates are slow (minutes); both are cached in YAML files that ``cost`` reads:
``python -m jax_distill.plan.calibration anchors`` and ``... estimates CONFIG`` recompute them (see docs/cost.md).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import yaml

from jax_distill.hardware import CHIPS

# Chip -> family: which estimators apply (plan/step_time.py for TPU, plan/gpu.py for GPU).
FAMILY = {"v4": "tpu", "v5e": "tpu", "v5p": "tpu", "v6e": "tpu", "a100": "gpu", "h100": "gpu", "h200": "gpu"}
# One efficiency factor per estimator: each misses a real step's overheads in its own way.
ESTIMATORS = {"libtpu": "libtpu optimal_seconds (plan/step_time.py)",
              "tpu-roofline": "our TPU roofline over the HLO (plan/roofline.py)",
              "gpu-roofline": "our GPU roofline over the HLO (plan/roofline.py)"}


def load_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")  # noqa: TRY004 - a bad file, as load_prices says
    return data


def published_mfu(anchor: dict[str, Any]) -> float:
    """The anchor's published MFU in our FLOP convention (model/flops.py: 6N + causal attention) when the source gives
    tokens/s per chip; else the source's own MFU figure (``published_mfu``)."""
    if anchor.get("tokens_per_s_per_chip"):
        from jax_distill.model.flops import train_flops_per_token

        fpt = train_flops_per_token(anchor_model(anchor), anchor["seq_len"])
        return anchor["tokens_per_s_per_chip"] * fpt / CHIPS[anchor["chip"]].peak_bf16_flops
    return float(anchor["published_mfu"])


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def factors(anchors: list[dict[str, Any]]) -> dict[str, float]:
    """Per estimator: geometric mean of published MFU / its estimated MFU (``anchor["estimates"][estimator]``) over
    the anchors where that estimate is usable."""
    ratios: dict[str, list[float]] = {}
    for a in anchors:
        for est, mfu in (a.get("estimates") or {}).items():
            if usable(mfu):
                ratios.setdefault(est, []).append(published_mfu(a) / mfu)
    return {est: round(_geomean(r), 4) for est, r in sorted(ratios.items())}


def leave_one_out(anchors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (anchor, usable estimate): published and raw MFU, the factor from the *other* anchors with that
    estimator (None when it has no other), the calibrated MFU and its relative error against the published one."""
    rows = []
    for a in anchors:
        for est, mfu in (a.get("estimates") or {}).items():
            if not usable(mfu):
                continue
            others = [published_mfu(b) / b["estimates"][est] for b in anchors
                      if b is not a and usable((b.get("estimates") or {}).get(est))]
            factor = _geomean(others) if others else None
            pub = published_mfu(a)
            rows.append({"anchor": a["name"], "chip": a["chip"], "estimator": est, "published": pub, "raw": mfu,
                         "raw_error": mfu / pub - 1, "loo_factor": factor,
                         "calibrated": mfu * factor if factor else None,
                         "error": mfu * factor / pub - 1 if factor else None})
    return rows


def error_band(anchors: list[dict[str, Any]]) -> dict[str, float]:
    """Per estimator: the largest |leave-one-out error| over its anchors, the relative band `cost` draws around a
    calibrated MFU. An estimator with a single anchor has no leave-one-out error of its own: it gets the largest of
    the others (its spread is unmeasured, not zero)."""
    errs: dict[str, list[float]] = {}
    for r in leave_one_out(anchors):
        errs.setdefault(r["estimator"], []).extend([abs(r["error"])] if r["error"] is not None else [])
    worst = max((e for v in errs.values() for e in v), default=None)
    return {est: round(max(v) if v else worst, 4) for est, v in sorted(errs.items()) if v or worst is not None}


def error_table(anchors: list[dict[str, Any]]) -> str:
    """Markdown: per anchor and usable estimate, published MFU, raw estimate, leave-one-out factor, calibrated
    estimate and its error (docs/cost.md prints it)."""
    rows = [("| anchor | chip | estimator | published MFU | ours raw (error) | factor from the others | calibrated "
             "| error |"), "|---|---|---|---|---|---|---|---|"]
    for r in leave_one_out(anchors):
        loo = "—, no other anchor" if r["loo_factor"] is None else f"{r['loo_factor']:.3f}"
        cal = "—" if r["calibrated"] is None else f"{r['calibrated']:.1%}"
        err = "—" if r["error"] is None else f"{r['error']:+.1%}"
        rows.append(f"| {r['anchor']} | {r['chip']} | {r['estimator']} | {r['published']:.1%} | {r['raw']:.1%} "
                    f"({r['raw_error']:+.1%}) | {loo} | {cal} | {err} |")
    return "\n".join(rows)


def usable(mfu: float | None) -> bool:
    """An estimate is used only when it is an MFU at all (0, 1]: a negative one means the per-layer extrapolation
    failed (the 2-layer program priced below the 1-layer one), which is reported, not used."""
    return mfu is not None and 0 < mfu <= 1


def anchor_model(anchor: dict[str, Any]):
    from jax_distill.model.config import ModelConfig

    m = dict(anchor["model"])
    return ModelConfig(**m).resolve()


def estimate_anchor(anchor: dict[str, Any]) -> dict[str, Any]:
    """Compile our estimator on the anchor's shape and slice: {ours_mfu, step_s, fits, per_chip_gib, compile_s}."""
    from jax_distill.sharding import MeshConfig

    return estimate_slice(anchor_model(anchor), anchor["topology"], MeshConfig(**anchor.get("mesh", {})),
                          batch_size=anchor["batch_size"], seq_len=anchor["seq_len"],
                          grad_accum=anchor.get("grad_accum", 1), fit=False)


def estimate_slice(cfg, topology: str, mesh_cfg, *, batch_size: int, seq_len: int, grad_accum: int = 1,
                   fit: bool = True) -> dict[str, Any]:
    """Our step-time estimate (and fit) of training ``cfg`` at [batch_size, seq_len] on ``topology`` (a TPU slice
    name or a GPU topology such as ``8x8xh100``)."""
    import time

    from jax_distill.plan.gpu import is_gpu_topology, parse_gpu_topology

    t0 = time.perf_counter()
    if is_gpu_topology(topology):
        from jax_distill.plan.gpu import plan_gpu_training

        r = plan_gpu_training(cfg, parse_gpu_topology(topology), seq_len=seq_len, batch_size=batch_size,
                              mesh_cfg=mesh_cfg, grad_accum=grad_accum)
        out = {"ours_mfu": r.roofline_mfu, "step_s": r.roofline_step_s, "estimator": "gpu-roofline",
               "fits": r.fits, "per_chip_gib": (r.per_chip_bytes or 0) / 2**30, "usable_gib": r.usable_bytes / 2**30}
    else:
        from jax_distill.plan.topology import parse_topology

        topo = parse_topology(topology)
        fits, peak, est, error = None, None, {}, None
        if fit:
            from jax_distill.plan.aot import plan_training

            r = plan_training(cfg, topo, seq_len=seq_len, batch_size=batch_size, mesh_cfg=mesh_cfg,
                              grad_accum=grad_accum, estimate=False)
            fits, peak = r.fits, r.per_chip_bytes
        from jax_distill.plan.step_time import estimate_tpu_step
        from jax_distill.plan.topology import topology_devices
        from jax_distill.sharding import make_mesh

        try:
            est = estimate_tpu_step(cfg, make_mesh(mesh_cfg, topology_devices(topo)), batch_size=batch_size,
                                    seq_len=seq_len, grad_accum=grad_accum, chip=topo.chip).as_dict()
        except Exception as err:  # a 1-layer program too large for the chip is a result, not a crash
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            error = str(err).splitlines()[0][:300]
        out = {"ours_mfu": est.get("mfu"), "step_s": est.get("step_seconds"),
               "estimator": {"libtpu": "libtpu", "roofline": "tpu-roofline"}.get(est.get("estimator")),
               "libtpu_mfu": (est["mfu"] * est["step_seconds"] / est["libtpu_seconds"]
                              if est.get("libtpu_seconds") else None),
               "roofline_mfu": (est["mfu"] * est["step_seconds"] / est["roofline_seconds"] if est else None),
               "fits": fits,
               "per_chip_gib": (peak or 0) / 2**30 if peak else None, "usable_gib": topo.hbm_bytes / 2**30}
        if error:
            out["error"] = error
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def stage_shape(cfg) -> tuple[int, int, int]:
    """(batch, seq_len, grad_accum) of the stage whose step is largest: the one the estimate and the fit are for."""
    s = max(cfg.stages, key=lambda s: (s.data.seq_len * cfg.stage_batch_size(s), s.data.seq_len))
    return cfg.stage_batch_size(s), s.data.seq_len, cfg.train.grad_accum


def default_slices(chips: int = 64) -> dict[str, str]:
    """One slice per priced chip kind with ``chips`` chips (v5p names count TensorCores: 2 per chip)."""
    return {"v5e": f"v5e-{chips}", "v5p": f"v5p-{2 * chips}", "v6e": f"v6e-{chips}",
            "h100": f"{chips // 8}x8xh100", "h200": f"{chips // 8}x8xh200"}


def per_chip_mfu(estimates: dict[str, Any] | None, calibration: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{chip: {mfu, raw_mfu, factor, reason, topology, fits, ...}} from a config's cached or fresh estimates; each
    estimate is scaled by the factor of the estimator that made it (``estimator``: a key of :data:`ESTIMATORS`)."""
    out = {}
    facs = (calibration or {}).get("factors", {})
    for chip, e in ((estimates or {}).get("chips") or {}).items():
        est = e.get("estimator")
        if not usable(e.get("ours_mfu")) or est not in facs:
            why = (f"no calibration factor for {est}" if est not in facs else f"no estimate ({e['error'][:60]}...)"
                   if e.get("error") else f"its estimate {e.get('ours_mfu')} is unusable")
            out[chip] = {**e, "reason": f"compiled on {e['topology']}, {why}"}
            continue
        out[chip] = {**e, "raw_mfu": e["ours_mfu"], "factor": facs[est], "mfu": e["ours_mfu"] * facs[est],
                     "mfu_error": ((calibration or {}).get("error_band") or {}).get(est),
                     "reason": f"compiled estimate on {e['topology']} ({est}) x its calibration {facs[est]:.2f}"}
    return out


def versions() -> dict[str, str]:
    import datetime
    from importlib.metadata import PackageNotFoundError, version

    out = {"date": datetime.date.today().isoformat()}
    for pkg in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _dump(path: Path, header: str, data: dict[str, Any]) -> None:
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))


def main(argv: list[str] | None = None) -> int:
    """``anchors [--file configs/calibration.yaml] [--only NAME]``: compile every anchor, store ours and the factors.
    ``table [--file ...]``: print each anchor's published, raw and leave-one-out calibrated MFU with the error.
    ``estimates CONFIG [--slices chip=topology,...] [--file configs/step_estimates.yaml]``: estimate CONFIG's stage
    shape on one slice per chip and store it under the config's name."""
    import argparse
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    p = argparse.ArgumentParser(prog="python -m jax_distill.plan.calibration")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("anchors")
    a.add_argument("--file", default="configs/calibration.yaml")
    a.add_argument("--only", action="append")
    sub.add_parser("table", help="print the anchors' leave-one-out error table (markdown)").add_argument(
        "--file", default="configs/calibration.yaml")
    e = sub.add_parser("estimates")
    e.add_argument("config")
    e.add_argument("--file", default="configs/step_estimates.yaml")
    e.add_argument("--slices", default=None, help="chip=topology,... (default: cost's, for --chips chips)")
    e.add_argument("--chips", type=int, default=64)
    args = p.parse_args(argv)
    path = Path(args.file)
    if args.cmd == "table":
        data = load_yaml(path)
        print(error_table(data["anchors"]))
        print(f"\nfactors (all anchors): {data.get('factors')}; error band: {data.get('error_band')}")
        return 0
    if args.cmd == "anchors":
        data = load_yaml(path)
        header = path.read_text().split("\nanchors:")[0].rstrip("\n") + "\n"
        header = "".join(line + "\n" for line in header.splitlines() if line.startswith("#"))
        for anchor in data["anchors"]:
            if args.only and anchor["name"] not in args.only:
                continue
            res = estimate_anchor(anchor)
            anchor.update(ours_mfu=res["ours_mfu"], ours_step_s=res["step_s"], estimator=res["estimator"],
                          estimates=({"gpu-roofline": res["ours_mfu"]} if FAMILY[anchor["chip"]] == "gpu" else
                                     {"libtpu": res["libtpu_mfu"], "tpu-roofline": res["roofline_mfu"]}),
                          ours_fits=res["fits"], compile_s=res["compile_s"],
                          published_mfu_ours_convention=round(published_mfu(anchor), 4))
            print(anchor["name"], res, flush=True)
        data["factors"] = factors(data["anchors"])
        data["error_band"] = error_band(data["anchors"])
        data["computed_with"] = versions()
        _dump(path, header, data)
        print("factors", data["factors"])
        return 0
    from jax_distill.config import load_config
    from jax_distill.train.config import RunConfig

    cfg = load_config(RunConfig, args.config, [])
    slices = dict(kv.split("=") for kv in args.slices.split(",")) if args.slices else default_slices(args.chips)
    data = load_yaml(path) if path.exists() else {}
    header = "".join(line + "\n" for line in (path.read_text().splitlines() if path.exists() else [])
                     if line.startswith("#"))
    entry = compute_estimates(cfg, slices)
    old = (data.get("configs") or {}).get(cfg.name) or {}
    if (old.get("batch_size"), old.get("seq_len")) == (entry["batch_size"], entry["seq_len"]):
        entry["chips"] = {**old.get("chips", {}), **entry["chips"]}  # recompute some chips, keep the others
    data.setdefault("configs", {})[cfg.name] = entry
    _dump(path, header, data)
    print(yaml.safe_dump({cfg.name: entry}, sort_keys=False))
    return 0


def compute_estimates(cfg, slices: dict[str, str]) -> dict[str, Any]:
    """Compile ``cfg``'s longest stage (its batch, seq_len, mesh) on each chip's slice: {shape, chips: {...}}."""
    import dataclasses

    batch, seq_len, grad_accum = stage_shape(cfg)
    chips = {}
    for chip, topology in slices.items():
        model = cfg.model
        if FAMILY[chip] == "gpu" and model.attention == "splash":
            model = dataclasses.replace(model, attention="cudnn")  # the GPU's kernel for the same step
        elif FAMILY[chip] == "tpu" and model.attention == "cudnn":
            model = dataclasses.replace(model, attention="splash")
        res = estimate_slice(model, topology, cfg.mesh, batch_size=batch, seq_len=seq_len, grad_accum=grad_accum)
        chips[chip] = {"topology": topology, "attention": model.attention, **res}
        print(chip, chips[chip], file=sys.stderr, flush=True)  # progress; stdout stays `cost --json`
    return {"batch_size": batch, "seq_len": seq_len, "grad_accum": grad_accum, "computed_with": versions(),
            "chips": chips}


if __name__ == "__main__":
    raise SystemExit(main())
