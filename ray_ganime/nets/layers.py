"""Pieces shared by the generator and the discriminator: the norm factory, weight init, counting.

Every normalisation layer of the nets is made by :func:`make_norm`, so that one switch changes them all
(e.g. ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` under DDP finds every batch norm).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

__all__ = ["NORMS", "make_norm", "conv_bias", "init_weights", "count_parameters", "load_mapped_state_dict",
           "rename_modules"]

NORMS = ("batch", "instance", "none")


def make_norm(norm: str, num_features: int) -> nn.Module:
    """The normalisation layer of the pix2pix/CycleGAN code (``get_norm_layer``).

    * ``"batch"``: ``BatchNorm2d`` with learned affine and running statistics.
    * ``"instance"``: ``InstanceNorm2d`` without affine and without running statistics, as canonical.
    * ``"none"``: ``Identity``, kept as a module so that state-dict keys do not depend on the norm.
    """
    if norm == "batch":
        return nn.BatchNorm2d(num_features, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def conv_bias(norm: str) -> bool:
    """Whether the convolutions of a net with this norm carry a bias.

    Canonical pix2pix sets ``use_bias = norm is InstanceNorm2d`` for every convolution except the few it
    hard-codes (outermost up-convolution, first and last discriminator convolutions): a batch norm's
    shift makes a bias redundant, while an affine-free instance norm has no shift. Canonical also drops the
    bias with no norm at all (its ``Identity`` is not ``InstanceNorm2d``); we keep it there, since nothing
    else would shift the activations. That is the only departure, and it changes no canonical count.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return norm != "batch"


# Norms whose affine weight is a per-channel gain around 1.
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_WEIGHTED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Canonical ``init_weights(net, 'normal', gain)``, in place; returns ``module``.

    Convolutions and linear layers: weight ~ N(0, gain), bias 0. Norms with an affine part: weight ~ N(1, gain),
    bias 0 (canonical only names ``BatchNorm2d``; SyncBatchNorm and affine instance norms get the same).
    """

    def init_one(m: nn.Module) -> None:
        if isinstance(m, _WEIGHTED_TYPES):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORM_TYPES):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    return module.apply(init_one)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameter elements (buffers such as running statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def rename_modules(net: nn.Module, prefixes: Mapping[str, str]) -> dict[str, str]:
    """Every state-dict key of ``net`` -> the same tensor's key in another code base, whose module names
    ``prefixes`` gives (ours -> theirs; the tensor's own name, ``weight``, ``running_mean``, ..., is kept)."""
    mapping = {}
    for key in net.state_dict():
        module, _, leaf = key.rpartition(".")
        mapping[key] = f"{prefixes[module]}.{leaf}"
    return mapping


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def load_mapped_state_dict(net: nn.Module, mapping: Mapping[str, str], state_dict: Mapping[str, torch.Tensor],
                           what: str) -> None:
    """Loads ``state_dict``, whose keys are another code base's names of ``net``'s (``mapping``: ours -> theirs),
    into ``net``. Running statistics ``net`` has no place for are ignored (instance norms': checkpoints of
    PyTorch < 0.4 hold them, and canonical drops them on load too), as is a batch norm's missing
    ``num_batches_tracked`` (PyTorch < 0.4.1).
    Missing, unexpected or mis-shaped keys raise ``ValueError`` naming the first few, ``what`` the format."""
    theirs = set(mapping.values())
    state_dict = {k: v for k, v in state_dict.items()
                  if k in theirs or k.rpartition(".")[2] not in _RUNNING_STATS}
    ours = net.state_dict()
    missing = sorted(t for o, t in mapping.items() if t not in state_dict and not o.endswith("num_batches_tracked"))
    extra = sorted(set(state_dict) - theirs)
    if missing or extra:
        raise ValueError(f"not a {what} state dict: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                         f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    converted = dict(ours)
    for key, their_key in mapping.items():
        if their_key not in state_dict:
            continue
        value = state_dict[their_key]
        if value.shape != ours[key].shape:
            raise ValueError(f"not a {what} state dict: {their_key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(ours[key].shape)}")
        converted[key] = value
    net.load_state_dict(converted)
