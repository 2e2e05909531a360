import json

import cv2
import keras
import numpy as np
import pytest

from ercp_node.model.train import (
    ROBUST, ROBUST_SCOPE, ROBUST_TEXTURE, Augment, SegmentationDataset, augment_pair, fda_restyle, plot_history,
    random_texture, restyle_scope, soft_one_hot, train)
from ercp_node.model.unet import UNetConfig

TINY = UNetConfig(input_size=64, base_filters=4, depth=3)
# Keras 3.15 itself trips NumPy 2's copy-keyword deprecation when saving TF variables; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _toy(n=8, size=64, seed=0):
    """Scope bar, duct ellipse, stone disc, each with its own grey level, plus noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for m in masks:
        x = int(rng.integers(2, 14))
        cv2.rectangle(m, (x, 4), (x + 8, size - 4), 1, -1)
        c = (int(rng.integers(30, 45)), int(rng.integers(20, 44)))
        cv2.ellipse(m, c, (6, 16), float(rng.uniform(-30, 30)), 0, 360, 2, -1)
        cv2.circle(m, (c[0], c[1] + 5), 3, 3, -1)
    grey = np.array([0.2, 0.9, 0.6, 0.35], np.float32)
    images = grey[masks] + rng.normal(0, 0.05, masks.shape).astype(np.float32)
    return np.clip(images, 0, 1)[..., None], masks


def test_dataset_batches_and_consistent_augmentation():
    images, masks = _toy(5)
    ds = SegmentationDataset(images, masks, batch_size=2, augment=True, seed=3)
    assert len(ds) == 3
    x, y = ds[0]
    assert x.shape == (2, 64, 64, 1) and y.shape == (2, 64, 64, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(y.sum(-1), 1.0)
    assert ds[2][0].shape[0] == 1  # last, partial batch
    # geometry moves image and mask together: image = mask / 3 survives flips + rotation almost everywhere
    rng = np.random.default_rng(0)
    geo = Augment(hflip=1.0, vflip=1.0, rotate_deg=10.0, gain=0.0, bias=0.0, gamma=0.0)
    img, m = augment_pair(masks[0] / np.float32(3), masks[0], rng, geo)
    assert not np.array_equal(m, masks[0])
    assert (np.abs(img - m / 3) < 0.1).mean() > 0.95
    # a loader callable works like arrays
    ds2 = SegmentationDataset(loader=lambda i: (images[i, ..., 0], masks[i]), n=5, batch_size=5, shuffle=False)
    np.testing.assert_allclose(ds2[0][0], images)


def test_rehearsal_epochs_hold_every_site_image_and_a_fresh_draw_of_the_rest():
    images, masks = _toy(8)
    ds = SegmentationDataset(images, masks, batch_size=2, seed=1, core=3, rehearse=2)
    assert len(ds) == 3  # 5 items a epoch
    draws = set()
    for _ in range(6):
        items = sorted(int(i) for i in ds._order)
        assert items[:3] == [0, 1, 2] and len(items) == 5 and all(3 <= i < 8 for i in items[3:])
        draws.add(tuple(items[3:]))
        ds.on_epoch_end()
    assert len(draws) > 1  # the rehearsal images change from epoch to epoch
    x, _ = ds[0]
    assert x.shape == (2, 64, 64, 1)
    assert sorted(SegmentationDataset(images, masks, batch_size=2)._order) == list(range(8))  # default unchanged
    with pytest.raises(ValueError, match="core"):
        SegmentationDataset(images, masks, core=6, rehearse=3)


def test_pools_draw_from_each_in_turn_and_restyle_only_the_last():
    """Pseudo-labelled site images and rehearsal data as two pools after the site's: each epoch holds every site
    image, `draw` of each pool, fresh each epoch; FDA restyling touches the last pool (rehearsal) only."""
    images, masks = _toy(10)
    ds = SegmentationDataset(images, masks, batch_size=2, seed=1, core=2, pools=[(3, 1), (5, 2)], restyle=1.0)
    firsts = set()
    for _ in range(6):
        items = sorted(int(i) for i in ds._order)
        assert items[:2] == [0, 1] and 2 <= items[2] < 5 and all(5 <= i < 10 for i in items[3:]) and len(items) == 5
        firsts.add(items[2])
        ds.on_epoch_end()
    assert len(firsts) > 1 and ds.restyle_from == 5
    plain = SegmentationDataset(images, masks, batch_size=5, shuffle=False, core=2, pools=[(3, 3), (5, 0)],
                                restyle=1.0)
    x, _ = plain[0]  # site images and the whole first pool, nothing of the last: nothing restyled
    np.testing.assert_array_equal(x[..., 0], images[:5, ..., 0])
    with pytest.raises(ValueError, match="not both"):
        SegmentationDataset(images, masks, core=2, rehearse=1, pools=[(8, 1)])
    with pytest.raises(ValueError, match="pools"):
        SegmentationDataset(images, masks, core=2, pools=[(3, 1)])  # the pools must fill the rest


def test_pseudo_labels_are_the_argmax_of_the_image_and_its_mirror_averaged():
    from ercp_node.model.train import pseudo_label

    class Half(keras.Model):  # class 1 at 0.9 in the left half of the columns, 0.3 in the right half
        def call(self, x):
            w = x.shape[2]
            left = keras.ops.cast(keras.ops.arange(w) < w // 2, "float32")[None, None, :, None]
            p1 = keras.ops.broadcast_to(left, keras.ops.shape(x)) * 0.6 + 0.3
            return keras.ops.concatenate([1 - p1, p1], axis=-1)

    labels = pseudo_label(Half(), np.zeros((3, 4, 6), np.float16), batch_size=2)
    # alone the right half would be class 0 (0.3); with its mirror (0.9, flipped back) every pixel averages 0.6
    assert labels.shape == (3, 4, 6) and labels.dtype == np.uint8 and (labels == 1).all()


def test_fda_restyle_takes_the_styles_low_frequencies_and_keeps_the_images_edges():
    """Fourier domain adaptation: the result has the style image's low-frequency amplitudes (its brightness and the
    strength of its slow shading; the phase, so where things lie, stays the source's) and the source's edges (its
    high frequencies), so the source's label still fits it."""
    yy, xx = np.mgrid[:128, :128] / 127.0
    source = np.full((128, 128), 0.3, np.float32)
    source[40:80, 50:60] = 0.8  # a bar: the structure the label marks
    style = (0.45 + 0.3 * xx).astype(np.float32)  # brighter, shaded left to right (another display chain)
    out = fda_restyle(source, style, 0.05)
    assert out.shape == source.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert abs(out.mean() - style.mean()) < 0.02  # the style's brightness
    b = int(0.05 * 128)
    window = (slice(64 - b, 64 + b + 1),) * 2
    amp = lambda im: np.abs(np.fft.fftshift(np.fft.fft2(im)))[window]  # noqa: E731
    assert np.allclose(amp(out), amp(style), rtol=0.02, atol=1e-3 * amp(style).max())  # its low frequencies
    edges = lambda im: np.abs(cv2.Laplacian(im, cv2.CV_32F))  # noqa: E731
    bar = np.zeros_like(source, bool)
    bar[38:82, 48:62] = True
    bar[42:78, 52:58] = False  # the bar's outline
    assert edges(out)[bar].mean() > 0.8 * edges(source)[bar].mean()  # the edges the label follows are kept
    assert np.allclose(fda_restyle(source, source, 0.05), source, atol=1e-5)  # its own style: unchanged


def test_rehearsal_restyle_changes_only_rehearsal_images_and_no_label():
    images, masks = _toy(8)
    images[:3] = np.clip(images[:3] * 0.4 + 0.55, 0, 1)  # the "site": bright and flat
    plain = SegmentationDataset(images, masks, batch_size=8, seed=1, core=3, rehearse=5, shuffle=False)
    styled = SegmentationDataset(images, masks, batch_size=8, seed=1, core=3, rehearse=5, shuffle=False, restyle=1.0)
    (xp, yp), (xs, ys) = plain[0], styled[0]
    assert np.array_equal(yp, ys)  # labels untouched
    assert np.array_equal(xp[:3], xs[:3])  # site images untouched
    assert not np.allclose(xp[3:], xs[3:])
    assert abs(xs[3:].mean() - images[:3].mean()) < abs(xp[3:].mean() - images[:3].mean())  # nearer the site's look
    with pytest.raises(ValueError, match="restyle"):
        SegmentationDataset(images, masks, restyle=0.5)  # no rehearsal items to restyle
    with pytest.raises(ValueError, match="restyle"):
        SegmentationDataset(images, masks, core=3, rehearse=2, restyle=2.0)


def test_train_checkpoint_resume_and_curve(tmp_path):
    images, masks = _toy(8)
    data = (images[:6], masks[:6])
    val = (images[6:], masks[6:])

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt("simulated crash after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        train(TINY, data, val, out_dir=tmp_path, epochs=2, batch_size=3, lr=3e-3, callbacks=[Crash()])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 1
    assert (tmp_path / "last.keras").exists() and (tmp_path / "best.keras").exists()

    res = train(TINY, data, val, out_dir=tmp_path, epochs=2, batch_size=3, lr=3e-3)
    assert res.epochs_done == 2 and len(res.history["loss"]) == 2 and len(res.history["val_loss"]) == 2
    # continued from the checkpoint: the optimizer has taken 2 epochs x 2 batches steps, not 1 x 2
    assert int(res.model.optimizer.iterations.numpy()) == 4
    assert res.history["loss"][1] < res.history["loss"][0]
    assert res.model.loss.name == "dice_plus_focal"
    curve = cv2.imread(str(res.paths["curve"]))
    assert curve is not None and curve.shape[2] == 3 and (curve < 250).any()
    # asking for no more epochs than done trains nothing
    again = train(TINY, data, val, out_dir=tmp_path, epochs=2)
    assert again.epochs_done == 2 and int(again.model.optimizer.iterations.numpy()) == 4


def test_plot_history_handles_flat_and_empty(tmp_path):
    plot_history({"loss": [1.0, 1.0]}, tmp_path / "a.png")
    plot_history({}, tmp_path / "b.png")
    assert cv2.imread(str(tmp_path / "a.png")).shape == (440, 720, 3)


def test_mixed_precision_bf16_builds_and_trains(tmp_path):
    images, masks = _toy(4)
    res = train(TINY, (images, masks), out_dir=tmp_path, epochs=1, batch_size=4, mixed_precision=True)
    assert res.model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert res.model.output.dtype == "float32" and np.isfinite(res.history["loss"]).all()
    assert keras.config.dtype_policy().name == "float32"  # global policy restored
    with pytest.raises(ValueError):
        train(keras.Model(res.model.input, res.model.output), (images, masks), out_dir=tmp_path / "x",
              mixed_precision=True)


def test_mixed_precision_auto_follows_the_hardware(monkeypatch):
    """`--mixed-precision auto`: bf16 on a GPU, or on a CPU whose flags list amx_bf16 (TensorFlow backend); a CPU
    with AVX-512 BF16 alone emulates it slower than float32, so it stays float32 there."""
    from ercp_node.model import cli as model_cli
    from ercp_node.model import train as train_mod

    amx = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    avx_only = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n"
    assert train_mod.cpu_bf16_native(amx) and not train_mod.cpu_bf16_native(avx_only)
    assert not train_mod.cpu_bf16_native("processor\t: 0\n")  # no flags line: no claim
    assert not train_mod.cpu_bf16_native("flags\t: xamx_bf16y\n")  # whole flags only
    native = train_mod.cpu_bf16_native
    for gpu, cpuinfo, want in ((True, avx_only, True), (False, amx, True), (False, avx_only, False)):
        monkeypatch.setattr(train_mod, "gpu_available", lambda gpu=gpu: gpu)
        monkeypatch.setattr(train_mod, "cpu_bf16_native", lambda c=cpuinfo: native(c))
        assert model_cli._mixed("auto") is want, (gpu, cpuinfo)
    assert model_cli._mixed("on") is True and model_cli._mixed("off") is False


def test_robust_augmentation_keeps_image_and_mask_together():
    """Any rotation, flips and zoom move image and mask alike; black corners are background."""
    _, masks = _toy(1)
    geo = Augment(hflip=0.5, vflip=0.5, rotate_deg=180.0, gain=0.0, bias=0.0, gamma=0.0, scale=0.3, black_border=True)
    changed = 0
    for seed in range(6):
        img, m = augment_pair(masks[0] / np.float32(3), masks[0], np.random.default_rng(seed), geo)
        changed += not np.array_equal(m, masks[0])
        assert (np.abs(img - m / 3) < 0.1).mean() > 0.95
    assert changed == 6
    # the full recipe stays in [0, 1] and leaves the mask's label set alone
    img, m = augment_pair(masks[0] / np.float32(3), masks[0], np.random.default_rng(1), ROBUST)
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
    assert set(np.unique(m)) <= {0, 1, 2, 3}


def test_soft_targets_are_the_area_fractions_of_finer_labels():
    fine = np.zeros((8, 8), np.uint8)
    fine[0:2, 0:1] = 3  # half of model pixel (0, 0) is stone
    fine[4:8, 4:8] = 2  # model pixels (2, 2)..(3, 3) are all duct
    t = soft_one_hot(fine, (4, 4))
    assert t.shape == (4, 4, 4) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
    assert t[0, 0, 3] == pytest.approx(0.5) and t[0, 0, 0] == pytest.approx(0.5)
    assert (t[2:, 2:, 2] == 1.0).all()
    # on the labels' own grid: plain one-hot
    np.testing.assert_array_equal(soft_one_hot(fine, (8, 8)), np.eye(4, dtype=np.float32)[fine])


def test_finer_labels_follow_the_image_through_every_geometric_augmentation():
    """A 2x finer label map is rotated, zoomed and flipped with its image: its area fractions on the image's grid
    match the image pixel for pixel (image = coarse label / 3), and the dataset hands out soft targets."""
    _, masks = _toy(2)
    fine = cv2.resize(masks[0], (128, 128), interpolation=cv2.INTER_NEAREST)
    for seed in range(6):
        geo = Augment(hflip=0.5, vflip=0.5, rotate_deg=180.0, gain=0.0, bias=0.0, gamma=0.0, scale=0.3,
                      black_border=True)
        img, m = augment_pair(masks[0] / np.float32(3), fine, np.random.default_rng(seed), geo)
        assert m.shape == (128, 128) and img.shape == (64, 64)
        expect = soft_one_hot(m, img.shape) @ np.arange(4, dtype=np.float32) / 3
        assert (np.abs(img - expect) < 0.1).mean() > 0.95
    # with the same seed the hard path and the fine path draw the same geometry
    geo = Augment(hflip=0.5, vflip=0.5, rotate_deg=180.0, gain=0.0, bias=0.0, gamma=0.0, scale=0.3)
    _, hard = augment_pair(masks[0] / np.float32(3), masks[0], np.random.default_rng(4), geo)
    _, soft = augment_pair(masks[0] / np.float32(3), fine, np.random.default_rng(4), geo)
    assert (soft_one_hot(soft, hard.shape).argmax(-1) == hard).mean() > 0.95
    images = np.stack([masks[0], masks[1]]).astype(np.float32) / 3
    fines = np.stack([cv2.resize(m, (128, 128), interpolation=cv2.INTER_NEAREST) for m in masks])
    x, y = SegmentationDataset(images, fines, batch_size=2, augment=ROBUST, seed=1)[0]
    assert x.shape == (2, 64, 64, 1) and y.shape == (2, 64, 64, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert ((y > 0.01) & (y < 0.99)).any()  # edges are fractions, not a majority vote


def _braided_scope(size=128):
    """A dark tube with a ring pattern (braid) over a smooth background, and its label map."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    mask[:, 50:66] = 1
    mask[90:100, 20:40] = 2  # a duct away from the scope
    image = 0.6 + 0.1 * np.sin(xx / 40)
    image[mask == 1] = (0.2 + 0.15 * (np.sin(yy * 1.6) > 0))[mask == 1]  # rings every ~4 px
    image[mask == 2] = 0.3
    return image.astype(np.float32), mask


def test_restyle_scope_changes_the_scope_only_and_washes_its_texture_out():
    image, mask = _braided_scope()
    inside, ring_sd = mask == 1, float(image[mask == 1].std())
    contrasts = []
    for seed in range(8):
        out = restyle_scope(image, mask, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == image.shape
        assert np.array_equal(out[~inside], image[~inside])  # background and duct untouched
        assert out[inside].std() < 0.8 * ring_sd  # the braid is (mostly) smoothed away
        contrasts.append(float(0.6 - out[inside].mean()))
    # faint to slightly denser than the original (0.6 - 0.275 = 0.325 darker than its surroundings)
    assert min(contrasts) < 0.25 and max(contrasts) > 0.25
    # no scope in the image: nothing to restyle
    empty = np.zeros_like(mask)
    assert np.array_equal(restyle_scope(image, empty, np.random.default_rng(0)), image)


@pytest.mark.parametrize("part, recipe", [("scope_look", ROBUST_SCOPE), ("texture", ROBUST_TEXTURE)])
def test_a_restyling_part_draws_about_half_and_never_moves_the_mask(part, recipe):
    image, mask = _braided_scope()
    only = Augment(hflip=0.0, vflip=0.0, rotate_deg=0.0, gain=0.0, bias=0.0, gamma=0.0, **{part: 0.5})
    restyled = 0
    for seed in range(10):
        out, m = augment_pair(image, mask, np.random.default_rng(seed), only)
        assert np.array_equal(m, mask)  # the restyling never touches the label
        if part == "scope_look":
            assert np.allclose(out[mask != 1], image[mask != 1])  # the scope alone
        restyled += not np.allclose(out, image)
    assert 2 <= restyled <= 8
    assert getattr(ROBUST, part) == 0 and recipe == Augment(**{**ROBUST.__dict__, part: 0.5})
    img, m = augment_pair(image, mask, np.random.default_rng(3), recipe)
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0


def test_random_texture_changes_the_look_not_the_shapes():
    image, mask = _braided_scope()
    looks, inverted = [], 0
    for seed in range(12):
        out = random_texture(image, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == image.shape
        assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() - out.min() > 0.5  # equalised like any input
        # the structures stay where they were: each label's pixels still differ from the background's
        for label in (1, 2):
            assert abs(float(out[mask == label].mean() - out[mask == 0].mean())) > 0.02
        inverted += out[mask == 1].mean() > out[mask == 0].mean()  # the dark scope drawn light: grey is not kept
        looks.append(out)
    assert 0 < inverted < 12
    assert min(float(np.abs(a - b).mean()) for i, a in enumerate(looks) for b in looks[i + 1:]) > 0.01  # all differ
    again = random_texture(image, np.random.default_rng(5))
    assert np.array_equal(again, random_texture(image, np.random.default_rng(5)))  # seeded: reproducible
    flat = np.full_like(image, 0.4)
    assert np.array_equal(random_texture(flat, np.random.default_rng(0)), flat)  # nothing to render


def test_time_budget_stops_and_keeps_best(tmp_path):
    images, masks = _toy(6)
    res = train(TINY, (images, masks), out_dir=tmp_path, epochs=500, batch_size=3, lr=3e-3, time_budget_s=4.0)
    assert 1 <= res.epochs_done < 500
    assert (tmp_path / "best.keras").exists()


def test_lr_plateau_halves_the_rate_and_a_resumed_run_keeps_it(tmp_path):
    images, masks = _toy(6)
    val = _toy(3, seed=1)
    # a rate too small to move the validation loss by min_delta: every epoch is a plateau
    res = train(TINY, (images, masks), val, out_dir=tmp_path, epochs=3, batch_size=3, lr=1e-9, lr_plateau=1)
    rate = float(keras.ops.convert_to_numpy(res.model.optimizer.learning_rate))
    assert rate == pytest.approx(1e-9 / 4, rel=1e-3)  # halved after epochs 2 and 3 (epoch 1 sets the best)
    again = train(TINY, (images, masks), val, out_dir=tmp_path, epochs=4, batch_size=3, lr=1e-9)
    assert float(keras.ops.convert_to_numpy(again.model.optimizer.learning_rate)) == pytest.approx(rate, rel=1e-3)
    fixed = train(TINY, (images, masks), val, out_dir=tmp_path / "fixed", epochs=2, batch_size=3, lr=1e-9)
    assert float(keras.ops.convert_to_numpy(fixed.model.optimizer.learning_rate)) == pytest.approx(1e-9, rel=1e-3)


def test_xla_compiles_the_training_step_on_a_cpu_and_a_resumed_run_keeps_it(tmp_path):
    images, masks = _toy(6)
    plain = train(TINY, (images, masks), out_dir=tmp_path / "plain", epochs=1, batch_size=3, lr=3e-3)
    res = train(TINY, (images, masks), out_dir=tmp_path / "xla", epochs=1, batch_size=3, lr=3e-3, xla=True)
    if keras.backend.backend() == "tensorflow":
        assert res.model.jit_compile is True
        if not _has_gpu():
            assert plain.model.jit_compile is False  # what Keras's "auto" picks on a CPU-only machine
    assert np.isfinite(res.history["loss"]).all()
    again = train(TINY, (images, masks), out_dir=tmp_path / "xla", epochs=2, batch_size=3, lr=3e-3, xla=True)
    assert again.epochs_done == 2 and int(again.model.optimizer.iterations.numpy()) == 4
    if keras.backend.backend() == "tensorflow":
        assert again.model.jit_compile is True


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def test_fine_tune_starts_from_given_weights_and_freezes_encoder(tmp_path):
    images, masks = _toy(6)
    first = train(TINY, (images, masks), out_dir=tmp_path / "a", epochs=2, batch_size=3, lr=3e-3)
    init = first.model.get_weights()
    tuned = train(TINY, (images, masks), out_dir=tmp_path / "b", epochs=1, batch_size=3, lr=3e-3,
                  init_weights=init, freeze_encoder=True)
    enc = tuned.model.get_layer("enc0_conv1").get_weights()[0]
    np.testing.assert_array_equal(enc, first.model.get_layer("enc0_conv1").get_weights()[0])
    dec = tuned.model.get_layer("dec0_conv1").get_weights()[0]
    assert not np.array_equal(dec, first.model.get_layer("dec0_conv1").get_weights()[0])


def test_fine_tune_with_frozen_normalisation_keeps_every_batch_norm(tmp_path):
    images, masks = _toy(6)
    first = train(TINY, (images, masks), out_dir=tmp_path / "a", epochs=2, batch_size=3, lr=3e-3)
    init = first.model.get_weights()
    tuned = train(TINY, (images, masks), out_dir=tmp_path / "b", epochs=1, batch_size=3, lr=3e-3,
                  init_weights=init, freeze_norm=True)
    norms = [layer for layer in tuned.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    for layer in norms:  # scale, shift and the running mean and variance: all as the start had them
        for a, b in zip(layer.get_weights(), first.model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    conv = tuned.model.get_layer("enc0_conv1").get_weights()[0]  # the convolutions still learn
    assert not np.array_equal(conv, first.model.get_layer("enc0_conv1").get_weights()[0])


def test_weight_average_is_the_mean_of_the_tails_epochs_and_survives_a_resume(tmp_path):
    """average=True: the mean of the weights at the end of each epoch in the run's last quarter (epochs 4-6 of 6
    after 2 of the first run's), batch norm kept; a crash after epoch 4 and a resume go on averaging the same."""
    images, masks = _toy(6)
    init = train(TINY, (images, masks), out_dir=tmp_path / "a", epochs=1, batch_size=3, lr=3e-3).model.get_weights()
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((epoch, self.model.get_weights()))

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 4:
                raise KeyboardInterrupt("simulated crash")

    run = dict(out_dir=tmp_path / "b", epochs=6, batch_size=3, lr=3e-3, init_weights=init, freeze_norm=True,
               average=True)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, (images, masks), callbacks=[Snap(), Crash()], **run)
    assert json.loads((tmp_path / "b" / "average.json").read_text()) == {"count": 1, "epoch": 5}
    res = train(TINY, (images, masks), callbacks=[Snap()], **run)
    tail = [w for e, w in snapshots if e >= 4]  # epochs 5 and 6 (1-based): the last quarter of 6 is 4.5-6
    assert [e for e, _ in snapshots] == [0, 1, 2, 3, 4, 5] and len(tail) == 2
    model = keras.saving.load_model(res.paths["last"], compile=False)
    model.load_weights(res.paths["average"])
    for got, a, b in zip(model.get_weights(), *tail):
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(got, b) for got, b in zip(model.get_weights(), tail[-1]))  # not the last weights
    with pytest.raises(ValueError, match="freeze_norm"):
        train(TINY, (images, masks), out_dir=tmp_path / "c", epochs=1, average=True)


def test_init_of_another_grid_or_class_list_is_refused(tmp_path):
    from ercp_node.model.retrain import load_init
    from ercp_node.model.unet import build_unet

    other = build_unet(UNetConfig(input_size=32, base_filters=4, depth=3))
    other.save(tmp_path / "small.keras")
    with pytest.raises(ValueError, match="takes input"):
        load_init(tmp_path / "small.keras", TINY)
    five = build_unet(UNetConfig(input_size=64, base_filters=4, depth=3, n_classes=5))
    five.save(tmp_path / "five.keras")
    with pytest.raises(ValueError, match="classes"):
        load_init(tmp_path / "five.keras", TINY)
    build_unet(TINY).save(tmp_path / "ok.keras")
    (tmp_path / "ok.json").write_text(json.dumps({"labels": ["background", "scope", "duct"]}))
    with pytest.raises(ValueError, match="trained on classes"):
        load_init(tmp_path / "ok.keras", TINY)
    with pytest.raises(ValueError, match="not found"):
        load_init(tmp_path / "missing.keras", TINY)


def test_retrain_offers_every_augmentation_recipe():
    import argparse

    from ercp_node.model.cli import add_retrain_arguments
    from ercp_node.model.train import AUGMENTATIONS

    p = argparse.ArgumentParser()
    add_retrain_arguments(p)
    action = next(a for a in p._actions if a.dest == "augment")
    assert set(action.choices) == set(AUGMENTATIONS)  # the CLI lists them without importing Keras
