"""Calibration of the compiled step-time estimates (plan/calibration.py) and the per-chip MFU that `cost` uses."""

import json
import math

import pytest
import yaml

from jax_distill.cli import main
from jax_distill.model.config import ModelConfig
from jax_distill.model.flops import train_flops_per_token
from jax_distill.plan.calibration import (
    ESTIMATORS,
    FAMILY,
    error_band,
    factors,
    leave_one_out,
    published_mfu,
    usable,
)
from jax_distill.plan.cost import Workload, estimate, load_prices
from jax_distill.plan.topology import libtpu_available
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "qwen2.5-math-72b_v5p-128.yaml"


def test_stored_factors_are_recomputed_from_the_anchors():
    """Each estimator's factor is the geometric mean of published / its MFU over the anchors where it is usable; the
    stored factors equal that, every anchor names its source and has the estimate that `plan` uses there (usable on
    every anchor: v5e and v6e through our TPU roofline). Three TPU generations and one GPU at least."""
    cal = yaml.safe_load((REPO_ROOT / "configs" / "calibration.yaml").read_text())
    anchors = cal["anchors"]
    assert len({a["chip"] for a in anchors if FAMILY[a["chip"]] == "tpu"}) >= 3
    assert any(FAMILY[a["chip"]] == "gpu" for a in anchors)
    for a in anchors:
        assert a["source"].startswith("https://") and 0 < published_mfu(a) < 1
        assert a["estimator"] in ESTIMATORS and usable(a["ours_mfu"]) and a["estimates"][a["estimator"]] == a["ours_mfu"]
    assert set(cal["factors"]) == {"libtpu", "tpu-roofline", "gpu-roofline"}
    assert factors(anchors) == pytest.approx(cal["factors"], abs=1e-4)
    tpu = [published_mfu(a) / a["estimates"]["tpu-roofline"] for a in anchors if FAMILY[a["chip"]] == "tpu"]
    assert cal["factors"]["tpu-roofline"] == pytest.approx(math.prod(tpu) ** (1 / len(tpu)), abs=1e-4)


def test_leave_one_out_error_uses_the_other_anchors_factor():
    """Three anchors of one estimator: each one's calibrated MFU is its raw MFU x the geometric mean of the other
    two's published / raw; an estimator with a single anchor has no leave-one-out factor."""
    def anchor(name, pub, raw, est="tpu-roofline"):
        return {"name": name, "chip": "v5p", "published_mfu": pub, "estimates": {est: raw}}

    _anchors = [anchor("a", 0.5, 0.8), anchor("b", 0.4, 0.5), anchor("c", 0.6, 0.6), anchor("d", 0.3, 0.6, "libtpu"),
                anchor("e", 0.3, -0.1)]
    rows = leave_one_out(_anchors)
    by = {r["anchor"]: r for r in rows}
    assert set(by) == {"a", "b", "c", "d"}  # e's negative estimate is not a row
    assert by["a"]["loo_factor"] == pytest.approx(math.sqrt(0.4 / 0.5 * 0.6 / 0.6))
    assert by["a"]["error"] == pytest.approx(0.8 * by["a"]["loo_factor"] / 0.5 - 1)
    assert by["b"]["raw_error"] == pytest.approx(0.5 / 0.4 - 1)
    assert by["d"]["loo_factor"] is None and by["d"]["error"] is None
    # The band: the largest leave-one-out error per estimator; libtpu (one anchor) borrows the largest of all.
    worst = max(abs(by[k]["error"]) for k in "abc")
    assert error_band(_anchors) == pytest.approx({"tpu-roofline": worst, "libtpu": worst}, abs=1e-4)


def test_published_mfu_from_throughput_uses_our_flop_count():
    anchor = {"chip": "h100", "seq_len": 4096, "tokens_per_s_per_chip": 1000.0,
              "model": {"preset": "qwen2.5-0.5b"}}
    cfg = ModelConfig(preset="qwen2.5-0.5b")
    assert published_mfu(anchor) == pytest.approx(1000.0 * train_flops_per_token(cfg, 4096) / 989e12)


def test_per_chip_mfu_and_cheapest_fitting_line(tmp_path):
    prices = tmp_path / "p.yaml"
    prices.write_text("chips:\n  v5p: {on_demand: 4.0, spot: 2.0}\n  v6e: {on_demand: 1.0, spot: 0.5}\n"
                      "  h100: {on_demand: 10.0, spot: 3.0}\n")
    work = Workload(ModelConfig(preset="qwen2.5-0.5b"), [{"name": "s", "tokens": 10**9, "seq_len": 4096}])
    per_chip = {"v5p": {"mfu": 0.5, "reason": "r5", "topology": "v5p-8", "fits": True, "mfu_error": 0.2},
                "v6e": {"mfu": 0.25, "reason": "r6", "topology": "v6e-4", "fits": False}}
    lines = estimate(work, load_prices(prices), train_mfu=0.4, per_chip=per_chip)
    by = {(ln.chip, ln.pricing): ln for ln in lines}
    assert by["v5p", "spot"].train_chip_hours == pytest.approx(by["h100", "spot"].train_chip_hours
                                                                * 989e12 * 0.4 / (459e12 * 0.5))
    assert (by["v6e", "spot"].mfu, by["v6e", "spot"].mfu_source, by["h100", "spot"].mfu_source) == (0.25, "r6",
                                                                                                   "assumed")
    # v6e is cheapest but does not fit; h100 was not compiled: v5p is the cheapest that fits, per pricing.
    assert [(ln.chip, ln.pricing) for ln in lines if ln.cheapest_fitting] == [("v5p", "on_demand"), ("v5p", "spot")]
    assert by["h100", "spot"].fits is None
    # v5p's calibrated MFU carries a 20% band: training hours at 0.5 x 1.2 .. 0.5 x 0.8, evaluation unchanged.
    v5p = by["v5p", "spot"]
    low, high = v5p.cost_usd_band
    assert low == pytest.approx((v5p.train_chip_hours / 1.2 + v5p.eval_chip_hours) * 2.0)
    assert high == pytest.approx((v5p.train_chip_hours / 0.8 + v5p.eval_chip_hours) * 2.0)
    assert v5p.wall_hours_band[1] == pytest.approx((v5p.train_chip_hours / 0.8 + v5p.eval_chip_hours) / 64)
    assert by["v6e", "spot"].cost_usd_band is None  # no calibrated error: no band


def test_cost_json_on_the_72b_recipe_has_per_chip_mfu_fit_and_data(tmp_path, capsys):
    report = tmp_path / "distill_report.json"
    report.write_text(json.dumps({"teacher": {"kind": "api", "model": "o1-mini"}, "teacher_cost": {"usd": 812.5},
                                  "tokens": {"teacher_completion": 240_000_000}, "samples": {"kept": 30_000},
                                  "complete": True}))
    assert main(["cost", "--config", str(CONFIG), "--json", "--distill-report", str(report)]) == 0
    out = json.loads(capsys.readouterr().out)
    lines = [ln for ln in out["lines"] if ln["pricing"] == "spot"]
    estimated = {ln["chip"]: ln for ln in lines if ln["mfu_source"].startswith("compiled estimate")}
    assert {"v5p", "h100", "h200"} <= set(estimated)
    assert len({round(ln["mfu"], 4) for ln in estimated.values()}) == len(estimated)  # differ by chip
    for ln in estimated.values():
        assert "calibration" in ln["mfu_source"] and ln["slice"] and ln["fits"] in (True, False)
        assert out["assumptions"]["per_chip_mfu"][ln["chip"]]["mfu"] == ln["mfu"]
    assert ln["data_api_usd"] == 812.5 and out["data_generation"]["traces"] == 30_000
    cheapest = [ln for ln in lines if ln["cheapest_fitting"]]
    assert len(cheapest) == 1 and cheapest[0]["fits"]
    assert cheapest[0]["cost_usd"] == min(ln["cost_usd"] for ln in lines if ln["fits"])
    # An explicit MFU replaces the estimates on every chip and says so; the fit column stays.
    assert main(["cost", "--config", str(CONFIG), "--json", "--mfu", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {ln["mfu"] for ln in out["lines"]} == {0.3}
    assert all(ln["mfu_source"] == "assumed --mfu 0.3" for ln in out["lines"])
    assert any(ln["fits"] for ln in out["lines"])


@pytest.mark.skipif(not libtpu_available(), reason="libtpu not installed (pip install 'jax-distill[tpu]')")
def test_tpu_cost_model_prices_one_large_matmul_at_its_flops_over_the_matmul_rate():
    """libtpu's optimal_seconds for one compute-bound n^3 bf16 matmul on a v5p chip is 2 n^3 / 394 TFLOP/s (at 8192
    and at 16384: 8x the time for 2x the side; a 4096 matmul is not yet compute-bound in its model)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jax_distill.plan.step_time import _costs
    from jax_distill.plan.topology import parse_topology, topology_devices

    one = NamedSharding(Mesh(topology_devices(parse_topology("v5p-8"))[:1], ("x",)), P())
    seconds = {}
    for n in (8192, 16384):
        a = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=one)
        seconds[n] = _costs(jax.jit(lambda x, y: x @ y, out_shardings=one).lower(a, a).compile())["optimal_seconds"]
    for n, t in seconds.items():
        assert t == pytest.approx(2 * n**3 / 394e12, rel=0.02)


def test_unusable_or_uncalibrated_estimates_fall_back_and_say_why():
    from jax_distill.plan.calibration import per_chip_mfu

    est = {"chips": {"v5p": {"topology": "v5p-128", "ours_mfu": 0.5, "estimator": "libtpu", "fits": True},
                     "v5e": {"topology": "v5e-64", "ours_mfu": 0.6, "estimator": "tpu-roofline", "fits": True},
                     "v6e": {"topology": "v6e-64", "ours_mfu": -0.05, "estimator": "libtpu", "fits": False},
                     "h100": {"topology": "8x8xh100", "ours_mfu": 0.7, "estimator": "gpu-roofline", "fits": True}}}
    pc = per_chip_mfu(est, {"factors": {"libtpu": 0.9, "tpu-roofline": 0.5}})
    assert pc["v5p"]["mfu"] == pytest.approx(0.45) and "(libtpu) x its calibration 0.90" in pc["v5p"]["reason"]
    assert pc["v5e"]["mfu"] == pytest.approx(0.3) and "(tpu-roofline) x its calibration 0.50" in pc["v5e"]["reason"]
    assert "mfu" not in pc["v6e"] and "unusable" in pc["v6e"]["reason"] and pc["v6e"]["fits"] is False
    assert "mfu" not in pc["h100"] and "no calibration factor for gpu-roofline" in pc["h100"]["reason"]


@pytest.mark.skipif(not libtpu_available(), reason="libtpu not installed (pip install 'jax-distill[tpu]')")
def test_cost_estimate_compiles_the_named_slice_and_applies_the_factor(capsys):
    """`cost --estimate --slices v5p=v5p-8` compiles the tiny config's step there: that chip's MFU is the estimate x
    the TPU factor, with its slice and fit; the chips without a slice keep the assumed MFU and say so."""
    cal = yaml.safe_load((REPO_ROOT / "configs" / "calibration.yaml").read_text())
    assert main(["cost", "--config", str(REPO_ROOT / "configs" / "tiny_cpu.yaml"), "--json", "--estimate",
                 "--slices", "v5p=v5p-8", "--chips", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    v5p = next(ln for ln in out["lines"] if ln["chip"] == "v5p")
    raw = v5p["mfu"] / cal["factors"][v5p["mfu_source"].split("(")[1].split(")")[0]]
    assert 0 < raw < 1 and v5p["slice"] == "v5p-8" and v5p["fits"] is True
    assert v5p["mfu_source"].startswith("compiled estimate on v5p-8") and v5p["cheapest_fitting"]
    h100 = next(ln for ln in out["lines"] if ln["chip"] == "h100")
    assert (h100["mfu"], h100["fits"]) == (0.4, None) and h100["mfu_source"].startswith("assumed default")
