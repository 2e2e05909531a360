"""The test-time levers measured in bench/bench_edges.py (guided filter) and bench/bench_looks.py (context and
stone looks): each does what its docstring says on a frame whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import bench_module


@pytest.fixture(scope="module")
def edges():
    return bench_module("bench_edges")


@pytest.fixture(scope="module")
def looks():
    return bench_module("bench_looks")


def _blurred_step(width=64, edge=30, blur_from=26, blur_to=38):
    """A guide with a sharp step at `edge` and a class plane whose step is a ramp over [blur_from, blur_to)."""
    guide = np.zeros((16, width), np.float32)
    guide[:, edge:] = 1.0
    ramp = np.clip((np.arange(width) - blur_from) / (blur_to - blur_from), 0.0, 1.0).astype(np.float32)
    p = np.broadcast_to(ramp, (16, width))
    return guide, np.stack([1 - p, p], axis=-1)


def test_guided_filter_moves_a_blurred_boundary_towards_the_guide_edge(edges):
    guide, planes = _blurred_step(blur_from=20, blur_to=30)  # plain argmax: the boundary at 25, the edge at 30
    plain = np.argmax(planes, -1)[0]
    assert int(np.argmax(plain)) == 26
    q = edges.guided_filter(guide, planes, radius=6, eps=1e-4)
    assert 26 < int(np.argmax(np.argmax(q, -1)[0])) <= 30


def test_guided_filter_radius_zero_and_flat_guide(edges):
    guide, planes = _blurred_step()
    np.testing.assert_array_equal(edges.guided_filter(guide, planes, 0, 0.01), planes)
    flat = edges.guided_filter(np.zeros_like(guide), planes, 2, 0.01)  # no edge: a box mean of the planes
    np.testing.assert_allclose(flat.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        edges.guided_filter(guide[:, :10], planes, 2, 0.01)


def test_refined_labels_radius_in_model_pixels(edges):
    assert edges.source_radius(1.0, (1024, 768), 256) == 4
    assert edges.source_radius(0.5, (576, 576), 256) == 1
    guide, planes = _blurred_step()
    np.testing.assert_array_equal(edges.refined_labels(planes, guide, 0, 0.01, 256), np.argmax(planes, -1))


def test_stone_look_blends_only_the_stone_plane_inside_its_window(looks):
    planes = np.full((40, 50, 4), 0.25, np.float32)
    pz = np.zeros((10, 20, 4), np.float32)
    pz[..., 3] = 1.0
    look = ((5, 15, 10, 30), pz, np.ones((10, 20), np.float32))
    stone = looks.blend(planes, look, 0.5, "stone")
    assert np.all(stone[5:15, 10:30, 3] == 0.625) and np.all(stone[5:15, 10:30, :3] == 0.25)
    outside = np.ones((40, 50), bool)
    outside[5:15, 10:30] = False
    np.testing.assert_array_equal(stone[outside], planes[outside])
    every = looks.blend(planes, look, 0.5, "all")
    np.testing.assert_allclose(every[5:15, 10:30], np.broadcast_to([0.125, 0.125, 0.125, 0.625], (10, 20, 4)))
    assert looks.blend(planes, None, 0.5, "all") is planes  # no duct, no look
