"""node.workers = 0 (the default) picks the worker count from the machine; explicit counts are kept."""

from __future__ import annotations

import os

import pytest

from ercp_node.config.settings import ConfigError, Settings, validate, worker_count


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
