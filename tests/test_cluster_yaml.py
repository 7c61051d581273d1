"""cluster.yaml validates against the schema shipped inside the ray package (offline)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")
autoscaler = pytest.importorskip("ray.autoscaler")

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def schema():
    with open(os.path.join(os.path.dirname(autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


@pytest.fixture
def config():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_is_valid(schema, config):
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(copy.deepcopy(config)))     # what `ray up` runs


def test_cluster_yaml_shape(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    cpu = [name for name, t in types.items()
           if name != config["head_node_type"] and not t["resources"].get("GPU")]
    assert gpu and cpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    setup = " ".join(config["setup_commands"])
    assert "kernelbank" in setup and "torch" in setup


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),  # typo
    lambda c: c.update(setup_command=c.pop("setup_commands")),               # typo
    lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
    lambda c: c["available_node_types"]["cpu_worker"].pop("node_config"),
])
def test_broken_variants_are_rejected(schema, config, break_it):
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
