"""A worker runs one phantom image through its whole path before its first job (nothing stored or sent), and a
failing warm-up never keeps the node from serving."""

import logging
from types import SimpleNamespace

from ercp_node.config.settings import Settings
from ercp_node.model.inference import SHIPPED, Segmenter
from ercp_node.node.worker import Worker


def _worker(segmenter):
    # no database, no destinations: a warm-up that tried to store or send anything would fail and return None
    return Worker(SimpleNamespace(settings=Settings()), segmenter, "t/w0")


def test_warm_up_runs_the_served_path_and_stores_nothing(caplog):
    seg = Segmenter.load(SHIPPED, tta="flip", postprocess="anatomy", stone_min_peak="model",
                         stone_min_rose_k="model", zoom=1.4)
    w = _worker(seg)
    assert not w.warmed
    with caplog.at_level(logging.INFO, logger="ercp_node.worker"):
        took = w.warm_up()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert w.warmed and took is not None and took > 0
    assert any("t/w0: model warmed up in" in r.getMessage() for r in caplog.records)  # the operator sees its cost


class _Broken:
    version = "broken"

    def segment(self, frames, batch_size=16, shutters=None):
        raise RuntimeError("no such kernel")

    def __getattr__(self, name):
        raise RuntimeError("no such kernel")


def test_a_failed_warm_up_is_logged_and_the_worker_still_serves(caplog):
    w = _worker(_Broken())
    with caplog.at_level(logging.ERROR, logger="ercp_node.worker"):
        assert w.warm_up() is None
    assert w.warmed  # not retried before every job
    assert any("warm-up failed" in r.message and "no such kernel" in r.exc_text for r in caplog.records)
