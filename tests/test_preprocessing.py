import cv2
import numpy as np
import pytest

from ercp_node.preprocessing import pipeline as pp
from helpers import masked_frame


def test_median_removes_salt_pixel_and_text_stroke():
    img = np.full((32, 32), 100, np.uint8)
    img[5, 5] = 255  # salt
    img[20, 4:28] = 250  # 1-px horizontal text stroke
    img[8:26, 15] = 0  # 1-px vertical stroke (pepper)
    out = pp.median_filter(img)
    assert out.dtype == np.uint8
    assert (out == 100).all()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_median_non_uint8_matches_opencv_uint8(dtype):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 37), dtype=np.uint8)
    ref = cv2.medianBlur(img, 7)
    out = pp.median_filter(img.astype(dtype))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.astype(np.uint8), ref)


def test_median_16bit_keeps_full_precision():
    img = np.full((20, 20), 40000, np.uint16)
    img[10, 10] = 65535
    img[:, :10] += 3  # a 3-level step, would vanish if quantised to 8 bits
    out = pp.median_filter(img)
    assert out[10, 10] == 40000 and out[5, 2] == 40003 and out[5, 15] == 40000


def test_to_unit_grey_bits_and_photometric():
    u8 = np.array([[0, 255]], np.uint8)
    np.testing.assert_allclose(pp.to_unit_grey(u8, bits_stored=8, photometric="MONOCHROME2"), [[0, 1]])
    np.testing.assert_allclose(pp.to_unit_grey(u8, bits_stored=8, photometric="MONOCHROME1"), [[1, 0]])
    u12 = np.array([[0, 2048, 4095]], np.uint16)
    x = pp.to_unit_grey(u12, bits_stored=12, photometric="MONOCHROME2")
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0, 2048 / 4095, 1]], rtol=1e-6)
    # bits above BitsStored are not pixel data (e.g. a legacy overlay bit)
    np.testing.assert_allclose(pp.to_unit_grey(u12 | 0x8000, bits_stored=12, photometric="MONOCHROME2"), x)
    u16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_allclose(pp.to_unit_grey(u16, bits_stored=16, photometric="MONOCHROME1"), [[1, 0]])
    with pytest.raises(ValueError):
        pp.to_unit_grey(u8, bits_stored=8, photometric="RGB")


def test_saturation_clips_0p3_percent_split_over_tails():
    x = np.random.default_rng(2).random((200, 500)).astype(np.float32) * 0.5 + 0.2
    y = pp.saturation_stretch(x)
    n = x.size
    assert y.min() == 0.0 and y.max() == 1.0
    assert abs((y == 0).sum() - 0.0015 * n) <= 2
    assert abs((y == 1).sum() - 0.0015 * n) <= 2
    # a flat image is left alone rather than divided by zero
    np.testing.assert_array_equal(pp.saturation_stretch(np.full((4, 4), 0.3, np.float32)), np.float32(0.3))


def test_equalisation_flattens_histogram_and_matches_opencv():
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(90, 12, (128, 128)), 0, 255).astype(np.uint8)  # narrow, peaked histogram
    y = pp.equalize_hist(img / np.float32(255))
    ref = cv2.equalizeHist(img) / 255.0
    assert np.abs(y - ref).max() <= 0.5 / 255 + 1e-6
    # flat: each quarter of the output range holds ~a quarter of the pixels
    counts = np.histogram(y, bins=4, range=(0, 1))[0] / y.size
    np.testing.assert_allclose(counts, 0.25, atol=0.03)
    assert np.histogram(img / 255.0, bins=4, range=(0, 1))[0].max() / img.size > 0.9


def test_sharpen_known_kernel_increases_edge_contrast():
    x = np.full((9, 10), 0.4, np.float32)
    x[:, 5:] = 0.6
    y = pp.sharpen(x, strength=1.0)
    # x - 1 * Laplacian4(x): flat parts unchanged, each side of the step pushed away by the step (0.2)
    np.testing.assert_allclose(y[4], [0.4] * 4 + [0.2, 0.8] + [0.6] * 4, atol=1e-6)
    assert y[4, 5] - y[4, 4] > x[4, 5] - x[4, 4]
    np.testing.assert_allclose(pp.sharpen(x, strength=0.5)[4, 4:6], [0.3, 0.7], atol=1e-6)


def test_resize_area_down():
    x = np.zeros((512, 512), np.float32)
    x[::2] = 1.0  # stripes alias under nearest/bilinear, average to 0.5 under area
    y = pp.resize_to_grid(x, 256)
    np.testing.assert_allclose(y, 0.5, atol=1e-6)


def test_label_map_round_trip_and_probability_mapping():
    labels = np.zeros((576, 576), np.uint8)
    cv2.rectangle(labels, (40, 60), (200, 500), 1, -1)  # scope
    cv2.ellipse(labels, (380, 300), (60, 180), 20, 0, 360, 2, -1)  # CBD
    cv2.circle(labels, (390, 380), 22, 3, -1)  # stone
    small = pp.resize_labels(labels, (256, 256))
    assert small.shape == (256, 256) and set(np.unique(small)) == {0, 1, 2, 3}
    back = pp.masks_to_source(small, (576, 576))
    assert back.shape == (576, 576) and back.dtype == np.uint8
    for c in (1, 2, 3):
        inter = ((back == c) & (labels == c)).sum()
        union = ((back == c) | (labels == c)).sum()
        assert inter / union > 0.95, c
    # probabilities: a boundary between two model pixels lands half-way on the source grid
    prob = np.zeros((2, 2, 4), np.float32)
    prob[:, 0, 0] = 1.0
    prob[:, 1, 3] = 1.0
    out = pp.masks_to_source(prob, (2, 8))
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 3, 3, 3, 3])


@pytest.mark.parametrize("bits,dtype,photometric", [(8, np.uint8, "MONOCHROME2"), (12, np.uint16, "MONOCHROME2"),
                                                    (16, np.uint16, "MONOCHROME1")])
def test_preprocess_shapes_and_range(bits, dtype, photometric):
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:300, :280]
    img = ((xx + yy) / 580 * ((1 << bits) - 1)).astype(dtype)  # a ramp, bright towards bottom-right
    img[150, 10:200] = (1 << bits) - 1  # burned-in text stroke
    img ^= rng.integers(0, 3, img.shape).astype(dtype)  # a little noise
    out = pp.preprocess(img, bits_stored=bits, photometric=photometric, size=64)
    assert out.shape == (64, 64, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    brighter_bottom_right = out[-8:, -8:].mean() > out[:8, :8].mean()
    assert brighter_bottom_right == (photometric == "MONOCHROME2")


def test_preprocess_8_vs_16_bit_agree():
    img8 = np.random.default_rng(5).integers(0, 256, (96, 96), dtype=np.uint8)
    a = pp.preprocess(img8, size=32)
    b = pp.preprocess(img8.astype(np.uint16) * 257, bits_stored=16, size=32)
    assert np.abs(a - b).mean() < 0.02


def test_preprocess_rejects_unannounced_16_bit():
    with pytest.raises(ValueError, match="BitsStored"):
        pp.preprocess(np.full((8, 8), 4000, np.uint16))


def test_the_exposed_field_is_where_the_beam_reached():
    for frame in (masked_frame(), masked_frame(np.uint8, 0), masked_frame().astype(np.float32),
                  np.repeat(masked_frame(np.uint8, 3)[..., None], 3, axis=-1)):
        field = pp.exposed_field(frame)
        assert field.shape == (300, 400) and field.dtype == bool
        assert not field[25:, :38].any() and not field[:18, 45:].any()  # the mask, text and all
        assert field[22:, 42:].all()  # the exposed field, the clipped scope in it included
    big = np.kron(masked_frame(), np.ones((3, 3), np.uint16))  # 900 x 1200: found on a subsampled grid
    field = pp.exposed_field(big)
    assert not field[75:, :110].any() and field[66:, 126:].all()
    # an intensifier's round field on a black (0) mask
    yy, xx = np.mgrid[:512, :512]
    round_ = np.random.default_rng(1).integers(60, 200, (512, 512)).astype(np.uint8)
    round_[(yy - 256) ** 2 + (xx - 256) ** 2 > 240 ** 2] = 0
    field = pp.exposed_field(round_)
    assert not field[:10, :10].any() and field[30:480, 250:260].all()
    # no mask: noise everywhere, or nothing but one value (then nothing can be said)
    assert pp.exposed_field(np.random.default_rng(2).integers(0, 4096, (200, 300)).astype(np.uint16)) is None
    assert pp.exposed_field(np.full((200, 200), 100, np.uint16)) is None


def test_the_input_is_the_fields_whatever_value_the_mask_stores():
    """A mask stored at a mid grey (here 1800, in the middle of the field's values) takes a step of the grey scale
    in the paper's whole-frame histogram; over the field the input is the same as with a black mask, and black."""
    black, grey = masked_frame(value=0), masked_frame(value=1800)
    black[150:170, 40:200] = grey[150:170, 40:200] = 900  # the clipped scope: its own value, in both frames
    kw = {"bits_stored": 12, "photometric": "MONOCHROME2"}
    inner = (slice(30, 290), slice(50, 390))  # the field, 10 px in from its edge (median and sharpening reach)
    a, b = pp.preprocess_native(black, **kw), pp.preprocess_native(grey, **kw)
    np.testing.assert_allclose(a[inner], b[inner], atol=1e-6)
    assert (a[60:, :30] == 0).all() and (b[60:, :30] == 0).all()
    whole_a, whole_b = (pp.preprocess_native(f, field=None, **kw) for f in (black, grey))
    assert np.abs(whole_a[inner] - whole_b[inner]).mean() > 0.03  # the step the mask's grey put into the field
    # a frame without a mask: the paper's step exactly; bad fields are refused
    plain = np.random.default_rng(3).integers(0, 4096, (120, 100)).astype(np.uint16)
    np.testing.assert_array_equal(pp.preprocess_native(plain, **kw), pp.preprocess_native(plain, field=None, **kw))
    with pytest.raises(ValueError, match="differ in shape"):
        pp.preprocess_native(plain, field=np.ones((10, 10), bool), **kw)
    with pytest.raises(ValueError, match="auto"):
        pp.preprocess_native(plain, field="yes", **kw)


def test_clahe_evens_out_an_exposure_gradient_the_global_step_keeps():
    """The alternative equalisation (issue 11: another input path, side by side): CLAHE maps each region's grey by
    its own tiles' histogram, so a smooth exposure gradient across the field (an intensifier's vignetting, the
    heel effect) is evened out while local structure stays; the paper's global histogram keeps the gradient."""
    rng = np.random.default_rng(4)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (256, 256)).astype(np.float32), (0, 0), 2)
    texture /= texture.std()
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]  # twice the exposure on the right
    frame = np.clip(1000 + 1000 * ramp + 200 * texture, 0, 4095).astype(np.uint16)
    kw = {"bits_stored": 12, "photometric": "MONOCHROME2", "field": None}
    g = pp.preprocess_native(frame, **kw)
    c = pp.preprocess_native(frame, equalization="clahe", **kw)
    assert g.shape == c.shape == frame.shape and 0 <= c.min() and c.max() <= 1
    left, right = (slice(None), slice(0, 64)), (slice(None), slice(192, 256))
    assert g[right].mean() - g[left].mean() > 0.6  # the gradient, kept
    assert abs(c[right].mean() - c[left].mean()) < 0.3  # evened out (measured 0.66 and 0.20)
    assert np.corrcoef(c[:, 96:160].ravel(), texture[:, 96:160].ravel())[0, 1] > 0.8  # the structure kept
    with pytest.raises(ValueError, match="unknown"):
        pp.preprocess_native(frame, equalization="adaptive", **kw)


def test_clahe_input_is_the_fields_whatever_value_the_mask_stores():
    """The mask is filled with the field's median grey before CLAHE (its one bin is capped by the clip limit), so
    its stored value does not reach the field's input; outside the field the input is black, as with the
    paper's step."""
    black, grey = masked_frame(value=0), masked_frame(value=1800)
    black[150:170, 40:200] = grey[150:170, 40:200] = 900
    kw = {"bits_stored": 12, "photometric": "MONOCHROME2", "equalization": "clahe"}
    inner = (slice(30, 290), slice(50, 390))
    a, b = pp.preprocess_native(black, **kw), pp.preprocess_native(grey, **kw)
    assert np.abs(a[inner] - b[inner]).mean() < 0.01
    assert (a[60:, :30] == 0).all() and (b[60:, :30] == 0).all()
    np.testing.assert_array_equal(pp.preprocess(black, size=64, **kw)[..., 0],
                                  pp.to_grid(a, 64)[..., 0])  # the grid input is the native one resized
