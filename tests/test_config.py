"""The config loader: YAML + dotted overrides (list items included) into typed dataclasses, strictly."""

from dataclasses import dataclass, field

import pytest

from jax_distill.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from jax_distill.train.config import RunConfig


@dataclass
class Inner:
    n: int = 1
    lr: float = 0.5
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    flag: bool = False


def test_overrides_reach_sections_and_list_items():
    data = {"items": [{"n": 1}, {"n": 2}]}
    apply_overrides(data, ["inner.lr=0.1", "items.1.n=7", "items.0.name=first", "flag=true"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == 0.1 and cfg.flag is True
    assert [i.n for i in cfg.items] == [1, 7] and cfg.items[0].name == "first"


@pytest.mark.parametrize("override, message", [
    ("items.2.n=1", r"items is a list of 2 item\(s\); .2. is not an index"),
    ("items.x.n=1", "'x' is not an index"),
    ("flag.deeper=1", "flag is a value, not a section"),
    ("noequals", "expected dotted.key=value"),
    ("a..b=1", "empty key segment"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"items": [{}, {}], "flag": True}, [override])


def test_types_and_unknown_fields_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match=r"cfg\.inner\.n: expected an integer, got 'x'"):
        from_dict(Outer, {"inner": {"n": "x"}}, "cfg")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['nn'\]"):
        from_dict(Outer, {"inner": {"nn": 1}}, "cfg")
    with pytest.raises(ConfigError, match="expected true/false"):
        from_dict(Outer, {"flag": "yes"}, "cfg")
    assert from_dict(Inner, {"n": 3.0, "lr": 1}).n == 3  # integral floats and ints-as-floats are fine


def test_shipped_config_with_stage_overrides(tmp_path):
    cfg = load_config(RunConfig, "configs/tiny_cpu.yaml", ["stages.1.steps=5", "stages.0.data.seq_len=1024",
                                                           "mesh.rules.embed=null"])
    assert cfg.stages[1].steps == 5 and cfg.stages[0].data.seq_len == 1024
    assert dict(cfg.mesh.axis_rules())["embed"] is None
    assert cfg.stage_offsets() == [0, cfg.stage_steps(cfg.stages[0]), cfg.stage_steps(cfg.stages[0]) + 5]
    # a round trip through plain data gives the same config
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.steps: expected an integer"):
        load_config(RunConfig, bad)
    bad.write_text("mesh: {rules: {heads: model}}\n")
    with pytest.raises(ConfigError, match=r"mesh\.rules\.heads: 'model' is not a mesh axis"):
        load_config(RunConfig, bad)
    bad.write_text("mesh: {rules: {headz: tensor}}\n")
    with pytest.raises(ConfigError, match=r"unknown logical axis \['headz'\]"):
        load_config(RunConfig, bad)


def test_config_read_from_gcs(gcs):
    """`--config gs://...`: every worker of a pod reads the same config object (launch/tpu_vm.py run)."""
    from jax_distill.paths import as_path

    from tests.conftest import REPO_ROOT

    bucket = gcs.make_bucket("jd-config-test")
    (as_path(bucket) / "run.yaml").write_text((REPO_ROOT / "configs" / "tiny_cpu.yaml").read_text())
    cfg = load_config(RunConfig, f"{bucket}/run.yaml", ["distributed.heartbeat_timeout_s=10"])
    assert cfg.name == "tiny_cpu" and len(cfg.stages) == 2 and cfg.distributed.heartbeat_timeout_s == 10
    with pytest.raises(ConfigError, match="config file not found: gs://jd-config-test/missing.yaml"):
        load_config(RunConfig, f"{bucket}/missing.yaml")
