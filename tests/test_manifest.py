"""The run manifest: valid JSON with the code version, packages, devices, config and data file hashes."""

import hashlib
import json
from importlib import metadata

from jax_distill.data.sources import sha256_file
from jax_distill.manifest import write_manifest
from jax_distill.train.config import RunConfig


def test_manifest_records_version_config_and_data(tmp_path):
    data = tmp_path / "traces.jsonl"
    data.write_text('{"problem": "1+1", "response": "\\\\boxed{2}"}\n')
    digest = sha256_file(str(data))
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    cfg = RunConfig(name="m", seed=3)
    path = write_manifest(tmp_path / "out", kind="train", config=cfg,
                          data_files=[{"path": str(data), "sha256": digest}], seeds={"seed": 3},
                          mesh={"shape": {"data": 1, "fsdp": 8, "tensor": 1}})
    m = json.loads(path.read_text())
    assert m["kind"] == "train"
    assert m["code"]["package_version"] == metadata.version("jax-distill")
    assert len(m["code"].get("git_commit", "x" * 40)) == 40  # a checkout records its commit
    assert m["packages"]["jax"] == metadata.version("jax")
    assert m["devices"]["platform"] == "cpu" and m["devices"]["device_count"] == 8
    assert m["config"]["name"] == "m" and m["config"]["seed"] == 3 and m["config"]["mesh"]["rules"] == {}
    assert m["data_files"] == [{"path": str(data), "sha256": digest}]
