"""Settings: node.workers = 0 (the default) picks the worker count from the machine, explicit counts are kept;
a mistyped ERCP_NODE_* environment variable is an error, like the same typo in the TOML file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ercp_node.config.settings import ConfigError, Settings, load, validate, worker_count


def test_auto_worker_count():
    s = Settings()
    assert s.node.workers == 0
    s.node.worker_mode = "process"
    assert worker_count(s) == min(os.cpu_count() or 1, 4)
    s.node.worker_mode = "thread"  # threads share one GIL: more than one does not help (docs/operations.md)
    assert worker_count(s) == 1
    s.node.workers = 3
    assert worker_count(s) == 3


def test_negative_worker_count_is_refused():
    s = Settings()
    s.node.workers = -1
    with pytest.raises(ConfigError, match="node.workers"):
        validate(s)


@pytest.mark.parametrize("name", [
    "ERCP_NODE_NODES_PORT",  # section typo
    "ERCP_NODE_NODE_PORTT",  # key typo
    "ERCP_NODE_MEASURE_LARGE_STONE",  # key cut short
    "ERCP_NODE_DESTINATION",  # singular
    "ERCP_NODE_DESTINATIONS_PACS",
    "ERCP_NODE_EXPORT",  # no key
])
def test_mistyped_environment_variable_is_an_error(name):
    with pytest.raises(ConfigError, match=name):
        load(None, env={name: "104"})


def test_environment_typo_is_refused_like_the_toml_typo(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("[node]\nportt = 104\n")
    with pytest.raises(ConfigError, match="node.portt"):
        load(cfg, env={})
    with pytest.raises(ConfigError, match="node.portt"):
        load(None, env={"ERCP_NODE_NODE_PORTT": "104"})
    # the spelled-right variables still apply, and other prefixes are not ours
    s = load(None, env={"ERCP_NODE_NODE_PORT": "104", "ERCP_NODE_MEASURE_LARGE_STONE_MM": "12",
                        "ERCP_NODE_DESTINATIONS": "PACS@127.0.0.1:4242", "ERCP_NODEX": "1", "ERCP_TEST_X": "1"})
    assert s.node.port == 104 and s.measure.large_stone_mm == 12.0 and str(s.destinations[0]) == "PACS@127.0.0.1:4242"


def test_config_check_exits_2_on_a_mistyped_environment_variable():
    env = dict(os.environ, ERCP_NODE_NODE_PORTT="104")
    r = subprocess.run([str(Path(sys.executable).parent / "ercp-node"), "config", "check"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "ERCP_NODE_NODE_PORTT" in r.stderr, r.stderr


def test_test_time_augmentation_setting():
    assert Settings().model.tta == "flip"  # the node's default (docs/model-card.md: better on every family)
    assert Settings().model.zoom == 1.4  # the second look (docs/model-card.md "Served with a second look at the duct")
    assert load(None, env={"ERCP_NODE_MODEL_ZOOM": "1"}).model.zoom == 1.0
    with pytest.raises(ConfigError, match=r"model.zoom 2.5 must be 1 \(no second look\) or in \(1, 2\]"):
        load(None, env={"ERCP_NODE_MODEL_ZOOM": "2.5"})
    assert load(None, env={"ERCP_NODE_MODEL_TTA": "none"}).model.tta == "none"
    with pytest.raises(ConfigError, match="model.tta 'rot' unknown"):
        load(None, env={"ERCP_NODE_MODEL_TTA": "rot"})


def test_precision_setting():
    assert Settings().model.precision == "auto"  # bfloat16 only where it is faster (bench/results/precision.json)
    assert load(None, env={"ERCP_NODE_MODEL_PRECISION": "float32"}).model.precision == "float32"
    with pytest.raises(ConfigError, match="model.precision 'fp16' unknown"):
        load(None, env={"ERCP_NODE_MODEL_PRECISION": "fp16"})
