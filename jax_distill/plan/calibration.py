"""Calibration of the compiled step-time estimates against published training runs, and the per-chip MFU that
`jax-distill cost` uses.

The estimates (plan/step_time.py for TPU: libtpu's roofline; plan/roofline.py for GPU: ours over the optimized HLO)
are rooflines: a real step is slower by launch gaps, pipeline bubbles and unhidden collectives. Each anchor in
``configs/calibration.yaml`` is a published run (model, batch, sequence, slice) expressed in our ModelConfig; we
compile our estimator on it, and a chip family's efficiency factor is the geometric mean of published MFU / our
estimated MFU over that family's anchors. ``cost`` then uses estimate x factor per chip.

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

# Chip -> family: one efficiency factor per family (the estimators differ: libtpu's cost model vs our GPU roofline).
FAMILY = {"v4": "tpu", "v5e": "tpu", "v5p": "tpu", "v6e": "tpu", "a100": "gpu", "h100": "gpu", "h200": "gpu"}


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


def factors(anchors: list[dict[str, Any]]) -> dict[str, float]:
    """Per family: geometric mean of published MFU / our estimated MFU over the anchors that have an estimate."""
    ratios: dict[str, list[float]] = {}
    for a in anchors:
        if usable(a.get("ours_mfu")):
            ratios.setdefault(FAMILY[a["chip"]], []).append(published_mfu(a) / a["ours_mfu"])
    return {fam: round(math.exp(sum(map(math.log, r)) / len(r)), 4) for fam, r in sorted(ratios.items())}


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
        out = {"ours_mfu": r.roofline_mfu, "step_s": r.roofline_step_s, "estimator": "GPU roofline (plan/roofline.py)",
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
                                    seq_len=seq_len, grad_accum=grad_accum,
                                    peak_flops=topo.chip.peak_bf16_flops).as_dict()
        except Exception as err:  # a 1-layer program too large for the chip is a result, not a crash
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            error = str(err).splitlines()[0][:300]
        out = {"ours_mfu": est.get("mfu"), "step_s": est.get("step_seconds"),
               "estimator": "libtpu optimal_seconds (plan/step_time.py)", "fits": fits,
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
    """{chip: {mfu, raw_mfu, factor, reason, topology, fits, ...}} from a config's cached or fresh estimates."""
    out = {}
    facs = (calibration or {}).get("factors", {})
    for chip, e in ((estimates or {}).get("chips") or {}).items():
        fam = FAMILY[chip]
        if not usable(e.get("ours_mfu")) or fam not in facs:
            why = ("no calibration factor" if fam not in facs else f"no estimate ({e['error'][:60]}...)"
                   if e.get("error") else f"its estimate {e.get('ours_mfu')} is unusable")
            out[chip] = {**e, "reason": f"compiled on {e['topology']}, {why}"}
            continue
        out[chip] = {**e, "raw_mfu": e["ours_mfu"], "factor": facs[fam], "mfu": e["ours_mfu"] * facs[fam],
                     "reason": f"compiled estimate on {e['topology']} ({e['estimator']}) x {fam} calibration "
                               f"{facs[fam]:.2f}"}
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
    e = sub.add_parser("estimates")
    e.add_argument("config")
    e.add_argument("--file", default="configs/step_estimates.yaml")
    e.add_argument("--slices", default=None, help="chip=topology,... (default: cost's, for --chips chips)")
    e.add_argument("--chips", type=int, default=64)
    args = p.parse_args(argv)
    path = Path(args.file)
    if args.cmd == "anchors":
        data = load_yaml(path)
        header = path.read_text().split("\nanchors:")[0].rstrip("\n") + "\n"
        header = "".join(line + "\n" for line in header.splitlines() if line.startswith("#"))
        for anchor in data["anchors"]:
            if args.only and anchor["name"] not in args.only:
                continue
            res = estimate_anchor(anchor)
            anchor.update(ours_mfu=res["ours_mfu"], ours_step_s=res["step_s"], ours_fits=res["fits"],
                          compile_s=res["compile_s"], published_mfu_ours_convention=round(published_mfu(anchor), 4))
            print(anchor["name"], res, flush=True)
        data["factors"] = factors(data["anchors"])
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
