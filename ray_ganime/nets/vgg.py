"""VGG19 feature taps for perceptual losses (AnimeGAN / CartoonGAN content and style terms) and their weights.

:class:`VGG19Features` is torchvision's ``vgg19().features`` cut after the deepest layer a loss asks for
(AnimeGAN's conv4_4 needs only the first 26 of its 37 modules), with the same ``features.N.*`` state-dict
keys, so torchvision's ImageNet file ``vgg19-dcbb9e9d.pth`` (keys ``features.*`` and ``classifier.*``)
loads into it; the classifier is never built. Layers are named in the papers' notation
(:data:`VGG_LAYER_NAMES`: conv1_1, relu1_1, ..., pool5). A ``conv*`` tap is the convolution's output before
its ReLU: AnimeGAN's content and gram losses use conv4_4 pre-activation, as its TF VGG19 does. The ReLUs are
not in-place, so a conv tap is not overwritten by the ReLU that follows it.

``forward`` takes the generators' images in [-1, 1] and applies torchvision's ImageNet normalisation itself.

Weights (:func:`load_vgg19`), tried in this order when no source is given:

1. ``$GANIME_VGG19_WEIGHTS`` (local path or ``s3://`` URI) -- a torchvision-layout state dict;
2. ``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth`` (where torchvision caches its download);
3. torchvision's own download of ``IMAGENET1K_V1``, only with ``allow_download=True``;
4. a seeded random init, with a loud warning: perceptual losses on random features train something, but
   not what the papers describe, and the runs are not comparable with real-VGG runs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ray_ganime import pretrained

__all__ = [
    "VGG_LAYER_NAMES",
    "VGG_LAYER_INDEX",
    "VGG_WEIGHTS_ENV",
    "VGG19_WEIGHTS_FILENAME",
    "VGG19_WEIGHTS_SHA256_PREFIX",
    "VGG_RANDOM_INIT_NAME",
    "VGG19Features",
    "load_vgg19",
]

VGG_WEIGHTS_ENV = "GANIME_VGG19_WEIGHTS"
VGG19_WEIGHTS_FILENAME = "vgg19-dcbb9e9d.pth"
#: torchvision convention: the hash in the file name is the sha256 prefix.
VGG19_WEIGHTS_SHA256_PREFIX = "dcbb9e9d"
VGG19_IMAGENET_NAME = "vgg19 IMAGENET1K_V1"
VGG_RANDOM_INIT_NAME = "RANDOM-INIT VGG19 (perceptual losses used random features)"
_RANDOM_SEED = 0

#: torchvision's ``cfgs["E"]`` (VGG19): output channels per conv, "M" for a 2x2 max pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    block, conv = 1, 1
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


#: The 37 modules of torchvision's ``vgg19().features``, in order, in paper notation.
VGG_LAYER_NAMES: tuple[str, ...] = _layer_names()
#: Layer name -> index in ``features`` (``conv4_4`` -> 25); Keras's names of the convolutions too
#: (``block5_conv2`` = ``conv5_2``), as the style-transfer papers' code names its taps.
VGG_LAYER_INDEX: dict[str, int] = {
    **{name: i for i, name in enumerate(VGG_LAYER_NAMES)},
    **{f"block{name[4:].replace('_', '_conv')}": i for i, name in enumerate(VGG_LAYER_NAMES)
       if name.startswith("conv")}}


class VGG19Features(nn.Module):
    """torchvision ``vgg19().features`` up to the deepest of ``layers``; ``forward`` returns ``{layer: tensor}``.

    Input: (N, 3, H, W) RGB in [-1, 1]. The module is freshly initialised as torchvision does it
    (Kaiming normal, fan-out, zero biases); :func:`load_vgg19` puts real weights in.
    """

    def __init__(self, layers: Sequence[str]) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        layers = list(dict.fromkeys(layers))  # de-duplicated, order kept
        if not layers:
            raise ValueError("VGG19Features needs at least one layer")
        unknown = [name for name in layers if name not in VGG_LAYER_INDEX]
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s) {unknown}; expected names like conv4_4, relu3_1, pool2")
        self.layers: tuple[str, ...] = tuple(layers)
        self._taps: dict[int, str] = {VGG_LAYER_INDEX[name]: name for name in layers}
        depth = max(self._taps) + 1

        modules: list[nn.Module] = []
        in_channels = 3
        for v in _VGG19_CFG:
            if v == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                conv = nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                # Not in-place: the conv output may be a tap, and an in-place ReLU would overwrite it.
                modules += [conv, nn.ReLU(inplace=False)]
                in_channels = int(v)
            if len(modules) >= depth:
                break
        self.features = nn.Sequential(*modules[:depth])
        # Non-persistent: the state dict stays exactly torchvision's features.* keys.
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGG19Features":
        """Always eval mode: a frozen feature extractor stays so when the module that owns it is trained."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG19Features expects (N, 3, H, W) images in [-1, 1], got {tuple(x.shape)}")
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return {name: out[name] for name in self.layers}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _hub_weights_path() -> Path:
    return pretrained.hub_path(VGG19_WEIGHTS_FILENAME)


def _load_state_dict_file(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    return pretrained.load_state_dict(
        source, VGG19_WEIGHTS_SHA256_PREFIX, VGG19_IMAGENET_NAME,
        f"VGG19 weights that are not torchvision's {VGG19_WEIGHTS_FILENAME}; "
        "perceptual losses will not match runs that used the ImageNet VGG19.")


def _from_state_dict(layers: Sequence[str], state: Mapping[str, torch.Tensor], what: str) -> VGG19Features:
    model = VGG19Features(layers)
    needed = model.state_dict()
    # The file may hold the whole network (classifier.*, deeper features.*): take only what this cut keeps.
    missing = [key for key in needed if key not in state]
    if missing:
        raise RuntimeError(
            f"{what}: not a torchvision VGG19 state dict: missing {len(missing)} key(s) needed up to "
            f"{VGG_LAYER_NAMES[len(model.features) - 1]}, e.g. {missing[:4]}"
        )
    try:
        model.load_state_dict({key: state[key] for key in needed}, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{what}: not a torchvision VGG19 state dict: {e}") from e
    return model


def _random_init_model(layers: Sequence[str]) -> tuple[VGG19Features, dict]:
    # Forked RNG: a fixed init that leaves the caller's random stream where it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        model = VGG19Features(layers)
    warnings.warn(
        f"VGG19: no real weights found (set ${VGG_WEIGHTS_ENV}, put {VGG19_WEIGHTS_FILENAME} in the torch hub "
        "cache, or pass allow_download=True). Perceptual losses use RANDOM features: results are NOT "
        "comparable with runs that used the ImageNet VGG19.",
        UserWarning,
        stacklevel=3,
    )
    ident = {"name": VGG_RANDOM_INIT_NAME, "sha256": None, "random_init": True, "source": "random"}
    return model, ident


def _from_torchvision_download(layers: Sequence[str]) -> tuple[VGG19Features, dict] | None:
    """torchvision's own download (into the hub cache); None when it fails (offline, say)."""
    try:
        from torchvision.models import VGG19_Weights

        state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - any failure means "no download", then random with its warning
        warnings.warn(f"VGG19: torchvision download failed ({type(e).__name__}: {e})", UserWarning, stacklevel=3)
        return None
    hub = _hub_weights_path()
    if hub.is_file():  # hash and label it like any local file
        state, ident = _load_state_dict_file(str(hub))
    else:
        ident = {"name": VGG19_IMAGENET_NAME, "sha256": None, "random_init": False, "source": "torchvision"}
    return _from_state_dict(layers, state, "torchvision download"), ident


def load_vgg19(
    layers: Sequence[str],
    source: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_download: bool = False,
) -> tuple[VGG19Features, dict]:
    """Build :class:`VGG19Features` for ``layers`` with the best available weights.

    ``source``: ``None`` (auto: ``$GANIME_VGG19_WEIGHTS`` -> torch hub cache -> torchvision download when
    ``allow_download`` -> random init with a warning), a local path or ``s3://`` URI of a torchvision VGG19
    state dict, ``"hub"`` (the hub cache file only), or ``"random"``. An explicitly requested source
    (``$GANIME_VGG19_WEIGHTS`` included) that cannot be loaded raises: no silent fallback.

    Returns ``(model, identity)``: the model in eval mode, frozen (``requires_grad`` False), on ``device``
    (and ``dtype`` if given); identity is ``{"name", "sha256", "random_init", "source"}``.
    """
    if source is None:
        env = os.environ.get(VGG_WEIGHTS_ENV)
        if env:
            source = env
    if source == "random":
        model, ident = _random_init_model(layers)
    elif source == "hub":
        p = _hub_weights_path()
        state, ident = _load_state_dict_file(str(p))
        model = _from_state_dict(layers, state, str(p))
    elif source is not None:
        state, ident = _load_state_dict_file(source)
        model = _from_state_dict(layers, state, source)
    else:
        hub = _hub_weights_path()
        loaded = None
        if hub.is_file():
            state, ident = _load_state_dict_file(str(hub))
            if not ident["sha256"].startswith(VGG19_WEIGHTS_SHA256_PREFIX):
                raise RuntimeError(f"{hub}: sha256 {ident['sha256']} does not match its name; corrupt download?")
            loaded = _from_state_dict(layers, state, str(hub)), ident
        elif allow_download:
            loaded = _from_torchvision_download(layers)
        model, ident = loaded if loaded is not None else _random_init_model(layers)
    model.eval()
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype), ident
