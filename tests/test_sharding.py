"""Logical-axis rules → mesh shardings through flax/jax's public APIs, on 8 host CPU devices."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jax_distill.model.config import ModelConfig
from jax_distill.model.qwen2 import init_model
from jax_distill.sharding import (DEFAULT_RULES, MeshConfig, ShardingFallbackWarning, batch_sharding, constrain,
                                  fit_spec, make_mesh, param_shardings, traced_on)


@pytest.fixture(scope="module")
def abstract_tiny():
    return nnx.eval_shape(lambda: init_model(ModelConfig(preset="tiny")))


def _specs(shardings):
    return jax.tree.map(lambda s: s.spec, shardings)


def test_default_rules_place_parameters(abstract_tiny):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    specs = _specs(param_shardings(abstract_tiny, mesh))
    assert specs["embed"] == P("tensor", "fsdp")
    assert specs["layers"]["q_proj"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["down_proj"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["input_norm"] == P(None, None)
    assert batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_run_rules_override_the_table(abstract_tiny):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = MeshConfig(rules={"embed": None, "mlp": ["fsdp", "tensor"], "batch": "data"}).axis_rules()
    specs = _specs(param_shardings(abstract_tiny, mesh, rules))
    assert specs["layers"]["q_proj"] == P(None, None, "tensor", None)
    assert specs["layers"]["gate_proj"] == P(None, None, ("fsdp", "tensor"))
    assert batch_sharding(mesh, rules=rules).spec == P("data", None)
    # the same rules through flax's context manager, as the training loop sets them
    with nnx.logical_axis_rules(rules):
        assert _specs(param_shardings(abstract_tiny, mesh)) == specs


def test_undividable_dimension_is_replicated_with_a_warning_naming_the_parameter(abstract_tiny):
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))  # tiny: 2 KV heads on tensor=4
    with pytest.warns(ShardingFallbackWarning, match=r"parameter layers\.k_proj: dimension 2 \(size 2\) does not "
                                                     r"divide by mesh axis 'tensor' \(size 4\)"):
        specs = _specs(param_shardings(abstract_tiny, mesh))
    assert specs["layers"]["k_proj"] == P(None, "fsdp", None, None)
    assert specs["layers"]["q_proj"] == P(None, "fsdp", "tensor", None)  # 4 query heads divide


def test_a_mesh_axis_used_twice_in_one_array_is_an_error():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with pytest.raises(ValueError, match="mesh axis 'tensor' is assigned to two dimensions"):
        fit_spec(P("tensor", "tensor"), (4, 4), mesh, "w")


def test_constrain_pins_activations_only_when_traced_on_a_mesh():
    x = jnp.ones((8, 4))
    assert constrain(x, ("batch", None)) is x  # no mesh: nothing to pin to
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    fn = traced_on(lambda y: constrain(y * 2, ("batch", "act_mlp")), mesh)
    text = jax.jit(fn).lower(x).as_text()
    assert 'sharding_constraint' in text and '{"data", "fsdp"}, {"tensor"}' in text
    assert float(jax.jit(fn)(x).sum()) == 64.0


def test_mesh_config_sizes():
    assert MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 12 devices, have 8"):
        MeshConfig(data=3, fsdp=2, tensor=2).shape(8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        MeshConfig(data=-1, fsdp=-1).shape(8)
    with pytest.raises(ValueError, match="mesh.tensor = 0"):
        MeshConfig(tensor=0).validate()
    assert dict(MeshConfig().axis_rules()) == dict(DEFAULT_RULES)
