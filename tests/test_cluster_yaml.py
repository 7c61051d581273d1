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


def _start_commands(config) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in config[key] if "ray start" in c]


def test_cluster_requires_token_auth_everywhere(config):
    starts = _start_commands(config)
    assert len(starts) == 2                                   # head and workers
    for command in starts:
        assert "RAY_AUTH_MODE=token ray start" in command, command
    # Ray 2.60 does not distribute a token: the user's file is copied to every node ...
    mounts = config["file_mounts"]
    assert mounts.get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"
    # ... and every node stops its setup when it did not arrive
    assert "test -s ~/.ray/auth_token" in config["setup_commands"][0]
    assert "exit 1" in config["setup_commands"][0]


def test_dashboard_is_bound_to_localhost_only(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in CLUSTER.read_text()
    assert "RAY_AUTH_TOKEN=" not in CLUSTER.read_text()       # no secret in the file itself


def test_the_installed_ray_needs_a_token_before_start_under_token_mode(tmp_path):
    """What the setup check guards against, on the installed Ray: under RAY_AUTH_MODE=token
    with no token, the check `ray start` runs (head and worker) refuses and creates none.
    (The check itself is called, so no Ray process is started.)"""
    import subprocess
    import sys
    env = {**os.environ, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    code = ("from ray._private.authentication.authentication_token_setup import "
            "ensure_token_if_auth_enabled as check\n"
            "import inspect, ray.scripts.scripts as s\n"
            "assert 'ensure_token_if_auth_enabled(system_config, create_token_if_missing=False)'"
            " in inspect.getsource(s.start.callback)\n"
            "check(None, create_token_if_missing=False)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "AuthenticationError" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / ".ray" / "auth_token").exists()
