"""VGG19 feature taps: layer names, truncation, torchvision state-dict compatibility and weight resolution.

No real ImageNet weights here (no download): a torchvision-layout state dict of a freshly initialised VGG19
stands in for ``vgg19-dcbb9e9d.pth``.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from ray_ganime import pretrained
from ray_ganime.nets import vgg as vgg_mod
from ray_ganime.nets.vgg import VGG_LAYER_INDEX, VGG_LAYER_NAMES, VGG19Features, load_vgg19

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _torchvision_features() -> nn.Sequential:
    """Real (not meta) torchvision vgg19().features, built without the ~400 MB classifier."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(123)
    return make_layers(cfgs["E"], batch_norm=False).eval()


@pytest.fixture(scope="module")
def tv_features() -> nn.Sequential:
    return _torchvision_features()


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory, tv_features) -> Path:
    """A torchvision-layout VGG19 file: features.* from torchvision, classifier.* with torchvision's shapes.

    The classifier tensors are expanded views of one element: the right keys and shapes in a tiny file
    (torch.save stores the one-element storage), since the loader must skip them, not read them.
    """
    state = {f"features.{k}": v.clone() for k, v in tv_features.state_dict().items()}
    with torch.device("meta"):
        full = torchvision.models.vgg19(weights=None).state_dict()
    for key, ref in full.items():
        if key.startswith("classifier."):
            state[key] = torch.zeros(1).expand(ref.shape)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-test.pth"
    torch.save(state, path)
    return path


@pytest.fixture(autouse=True)
def _no_env_or_hub(monkeypatch, tmp_path):
    # Isolated from a real $GANIME_VGG19_WEIGHTS or hub cache on the machine running the tests.
    monkeypatch.delenv(vgg_mod.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------- structure


def test_layer_names():
    assert len(VGG_LAYER_NAMES) == 37
    assert VGG_LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert VGG_LAYER_NAMES[-3:] == ("conv5_4", "relu5_4", "pool5")
    assert VGG_LAYER_INDEX["conv4_4"] == 25
    assert VGG_LAYER_INDEX["relu4_4"] == 26
    assert VGG_LAYER_INDEX["conv3_1"] == 10
    assert VGG_LAYER_INDEX["pool5"] == 36
    with torch.device("meta"):
        tv = torchvision.models.vgg19(weights=None).features
    assert len(tv) == 37
    for name, module in zip(VGG_LAYER_NAMES, tv):
        kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name.rstrip("0123456789_")]
        assert isinstance(module, kind), name


def test_state_dict_layout_matches_torchvision():
    with torch.device("meta"):
        tv = torchvision.models.vgg19(weights=None).features
        ours = VGG19Features(["pool5"])
    tv_shapes = {f"features.{k}": tuple(v.shape) for k, v in tv.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == tv_shapes
    for a, b in zip(ours.features, tv):
        if isinstance(a, nn.Conv2d):
            assert (a.kernel_size, a.stride, a.padding) == (b.kernel_size, b.stride, b.padding)
        if isinstance(a, nn.ReLU):
            assert a.inplace is False


def test_truncation():
    with torch.device("meta"):
        c44 = VGG19Features(["conv4_4"])
        c54 = VGG19Features(["conv5_4"])
        c11 = VGG19Features(["conv1_1"])
        both = VGG19Features(["conv5_4", "conv1_1"])
    assert len(c44.features) == 26
    assert len(c54.features) == 35
    assert len(c11.features) == 1
    assert len(both.features) == 35
    assert max(int(k.split(".")[1]) for k in c44.state_dict()) == 25
    assert len(c44.state_dict()) == 2 * 12  # 12 convs up to conv4_4, weight + bias


def test_bad_layers():
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        VGG19Features(["conv4_5"])
    with pytest.raises(ValueError, match="at least one"):
        VGG19Features([])


# ------------------------------------------------------------------------------------------- loading


def test_load_torchvision_file_matches_torchvision(tv_file, tv_features):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, ident = load_vgg19(["conv4_4"], source=str(tv_file))
    assert any("not torchvision's" in str(w.message) for w in caught)  # not the dcbb9e9d file
    assert ident["sha256"] == hashlib.sha256(tv_file.read_bytes()).hexdigest()
    assert ident["random_init"] is False
    assert ident["name"] == "custom:vgg19-test.pth"
    assert ident["source"] == str(tv_file)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())

    x = _images()
    out = model(x)
    assert list(out) == ["conv4_4"]
    with torch.no_grad():
        expected = tv_features[:26]((((x + 1) / 2) - MEAN) / STD)
    assert out["conv4_4"].shape == (2, 512, 4, 4)
    torch.testing.assert_close(out["conv4_4"], expected, rtol=0, atol=1e-6)


def test_pre_activation_and_several_layers(tv_file):
    with pytest.warns(UserWarning):
        model, _ = load_vgg19(["relu4_4", "conv4_4", "conv1_1", "pool1"], source=str(tv_file))
    out = model(_images())
    assert list(out) == ["relu4_4", "conv4_4", "conv1_1", "pool1"]
    assert out["conv1_1"].shape == (2, 64, 32, 32)
    assert out["pool1"].shape == (2, 64, 16, 16)
    assert (out["conv4_4"] < 0).any()
    assert (out["relu4_4"] >= 0).all()
    # The conv tap was not overwritten by its ReLU: relu4_4 is exactly relu(conv4_4).
    assert torch.equal(out["relu4_4"], torch.relu(out["conv4_4"]))


def test_random_is_seeded_leaves_rng_and_warns():
    before = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="RANDOM features"):
        a, ident = load_vgg19(["conv2_2"], source="random")
    with pytest.warns(UserWarning, match="RANDOM features"):
        b, _ = load_vgg19(["conv2_2"], source="random")
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ident == {
        "name": "RANDOM-INIT VGG19 (perceptual losses used random features)",
        "sha256": None,
        "random_init": True,
        "source": "random",
    }


def test_auto_falls_back_to_random():
    with pytest.warns(UserWarning, match="RANDOM features"):
        _, ident = load_vgg19(["conv1_1"])
    assert ident["random_init"] is True


def test_env_is_honoured(monkeypatch, tv_file):
    monkeypatch.setenv(vgg_mod.VGG_WEIGHTS_ENV, str(tv_file))
    with pytest.warns(UserWarning, match="not torchvision's"):
        model, ident = load_vgg19(["conv1_2"])
    assert ident["source"] == str(tv_file) and ident["random_init"] is False
    ref = torch.load(tv_file, weights_only=True)
    assert torch.equal(model.features[2].weight, ref["features.2.weight"])
    # An env path that does not exist is an explicit request: it raises, no random fallback.
    monkeypatch.setenv(vgg_mod.VGG_WEIGHTS_ENV, str(tv_file) + ".missing")
    with pytest.raises(FileNotFoundError):
        load_vgg19(["conv1_2"])


def test_hub_file_is_used_and_named(tmp_path, tv_file):
    # A hub-cache file whose sha256 does not match its name is refused, not used.
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / vgg_mod.VGG19_WEIGHTS_FILENAME).write_bytes(tv_file.read_bytes())
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="does not match its name"):
        load_vgg19(["conv1_1"])
    with pytest.warns(UserWarning, match="not torchvision's"):
        _, ident = load_vgg19(["conv1_1"], source="hub")
    assert ident["random_init"] is False


def test_imagenet_name_by_sha_prefix(monkeypatch, tv_file):
    real_sha256 = hashlib.sha256

    class _FakeHash:
        def __init__(self, data: bytes) -> None:
            self._digest = "dcbb9e9d" + real_sha256(data).hexdigest()[8:]

        def hexdigest(self) -> str:
            return self._digest

    monkeypatch.setattr(pretrained.hashlib, "sha256", _FakeHash)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real file is not "custom": no warning
        _, ident = load_vgg19(["conv1_1"], source=str(tv_file))
    assert ident["name"] == "vgg19 IMAGENET1K_V1"


def test_missing_explicit_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vgg19(["conv4_4"], source=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError):
        load_vgg19(["conv4_4"], source="hub")  # empty hub cache


def test_missing_key_raises(tmp_path, tv_file):
    state = torch.load(tv_file, weights_only=True)
    del state["features.25.bias"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"missing 1 key.*features\.25\.bias"):
        load_vgg19(["conv4_4"], source=str(path))
    # A shallower cut does not need that key.
    with pytest.warns(UserWarning):
        model, _ = load_vgg19(["conv4_3"], source=str(path))
    assert len(model.features) == 24


def test_dtype_and_device(tv_file):
    with pytest.warns(UserWarning):
        model, _ = load_vgg19(["conv1_2"], source=str(tv_file), dtype=torch.float64)
    assert model.features[0].weight.dtype == torch.float64
    assert model.mean.dtype == torch.float64
    assert model(_images().double())["conv1_2"].dtype == torch.float64


def test_bf16_autocast_gives_bf16_taps_close_to_float32():
    """The losses call it under the step's autocast (bf16 on CUDA); CPU autocast runs the same dtype rules."""
    model, _ = load_vgg19(["conv4_4"], source="random")
    x = _images()
    with torch.no_grad():
        full = model(x)["conv4_4"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)["conv4_4"]
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


def test_allow_download(monkeypatch, tv_file):
    from torchvision.models import VGG19_Weights

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", offline)
    with pytest.warns(UserWarning, match="RANDOM features"):
        _, ident = load_vgg19(["conv1_1"])  # no download unless asked
    with pytest.warns(UserWarning) as caught:
        _, ident = load_vgg19(["conv1_1"], allow_download=True)
    assert ident["random_init"] is True
    assert any("download failed" in str(w.message) for w in caught)

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", lambda self, *a, **k: torch.load(tv_file, weights_only=True))
    model, ident = load_vgg19(["conv1_1"], allow_download=True)
    assert ident == {"name": "vgg19 IMAGENET1K_V1", "sha256": None, "random_init": False, "source": "torchvision"}
    assert torch.equal(model.features[0].weight, torch.load(tv_file, weights_only=True)["features.0.weight"])


# -------------------------------------------------------------------------- as the losses use it


def test_tap_shapes_at_256px_in_both_notations():
    taps = ["conv1_1", "block2_conv1", "block3_conv1", "block4_conv1", "conv4_4", "block5_conv1", "block5_conv2"]
    model, _ = load_vgg19(taps, source="random")
    assert len(model.features) == VGG_LAYER_INDEX["conv5_2"] + 1 and VGG_LAYER_INDEX["block5_conv2"] == 30
    with torch.no_grad():
        out = model(_images(1, 256))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "conv1_1": (1, 64, 256, 256), "block2_conv1": (1, 128, 128, 128), "block3_conv1": (1, 256, 64, 64),
        "block4_conv1": (1, 512, 32, 32), "conv4_4": (1, 512, 32, 32), "block5_conv1": (1, 512, 16, 16),
        "block5_conv2": (1, 512, 16, 16)}
    assert (out["conv4_4"] < 0).any()  # pre-activation


def test_stays_frozen_and_in_eval_mode_inside_a_module_being_trained():
    class Owner(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.vgg, _ = load_vgg19(["conv2_2"], source="random")

        def forward(self, x):
            return self.vgg(self.conv(x))["conv2_2"].square().mean()

    owner = Owner().train()
    assert owner.training and owner.conv.training and not owner.vgg.training
    assert not any(m.training for m in owner.vgg.modules())
    assert not any(p.requires_grad for p in owner.vgg.parameters())
    owner(_images()).backward()
    assert owner.conv.weight.grad is not None and owner.conv.weight.grad.abs().sum() > 0  # gradients flow through
    assert all(p.grad is None for p in owner.vgg.parameters())


def test_builds_and_runs_on_the_meta_device():
    with torch.device("meta"):
        model = VGG19Features(["conv4_4"])
        out = model(torch.empty(2, 3, 256, 256))
    assert out["conv4_4"].shape == (2, 512, 32, 32) and out["conv4_4"].device.type == "meta"


def test_weights_from_s3_load_and_are_named_by_their_sha256(s3_bucket, tv_file, monkeypatch):
    import fsspec

    uri = f"{s3_bucket}/weights/vgg19-test.pth"
    with fsspec.open(uri, "wb") as f:
        f.write(tv_file.read_bytes())
    digest = hashlib.sha256(tv_file.read_bytes()).hexdigest()
    with pytest.warns(UserWarning, match="not torchvision's"):
        from_s3, ident = load_vgg19(["conv4_4"], source=uri)
    assert ident == {"name": "custom:vgg19-test.pth", "sha256": digest, "random_init": False, "source": uri}
    local, _ = load_vgg19(["conv4_4"], source=str(tv_file))
    x = _images()
    with torch.no_grad():
        assert torch.equal(from_s3(x)["conv4_4"], local(x)["conv4_4"])

    # A recipe's record of it, as checkpoints, packages, reports and Tune results carry it.
    from ray_ganime.config import load_config
    from ray_ganime.recipes import RECIPES

    monkeypatch.setenv(vgg_mod.VGG_WEIGHTS_ENV, uri)
    cfg = load_config(None, ["recipe=cartoongan", "model.ngf=8", "model.n_blocks=1", "model.ndf=8",
                             "data.crop_size=32", "data.load_size=32"])
    with pytest.warns(UserWarning, match="not torchvision's"):
        recipe = RECIPES["cartoongan"](cfg, "cpu")
    assert recipe.pretrained["vgg"]["sha256"] == digest and recipe.pretrained["vgg"]["source"] == uri
