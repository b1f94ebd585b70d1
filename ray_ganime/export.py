"""Model packages: a trained generator as a self-describing folder that serving loads without training code.

A package lives at ``<store>/models/<name>/``:

    generator.safetensors   the generator's state dict (float32 parameters and batch-norm buffers)
    generator.onnx          optional: the any-size generator (PadToMultiple) with dynamic batch/height/width
    model.json              what it is: network class and arguments, input/output channels and value range
                            (and ``input.preprocess``: the view serving applies to an upload first, as training
                            did), native size and size multiple, training config, validation/evaluation metrics
                            (each FID with its Inception weights' id), source checkpoint, sha256 of each file

A recipe with several generators (CycleGAN: ``a2b`` and ``b2a``) exports one package per generator,
``<name>-a2b`` and ``<name>-b2a``; model.json records the ``direction`` ("" for a recipe's sole generator).

``model.json`` is written last: a folder without it is an incomplete export and is neither listed nor
loaded. Loading reads JSON and safetensors only (no pickle) and rebuilds the network from
``nets.GENERATORS``, so it needs neither the recipe nor Ray; the weights' sha256 is checked first.

Data flow: train -> tune -> evaluate -> export -> serve. This module never imports Ray: checkpoints are
read through ``ray_ganime.checkpoints``, which does not either.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import itertools
import json
import os
import tempfile
import threading
import warnings
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from ray_ganime import __version__, checkpoints, storage, transforms
from ray_ganime.nets import PadToMultiple, build_generator, count_parameters

__all__ = ["FORMAT", "FORMAT_VERSION", "IMAGE_TO_IMAGE", "NOISE", "Listing", "Manifest", "PackageError",
           "check_manifest", "export_package", "export_packages", "find_evaluation", "import_animegan2",
           "import_junyanz", "list_packages", "load_package", "package_meta", "package_name", "package_source",
           "package_uri", "scan_packages", "write_package"]

FORMAT = "ray-ganime-model"
# Package kinds: what a generator consumes. Image-to-image generators take an image of any size (padded to
# size_multiple); noise generators take latents (input: latent_dim, distribution) and draw native_size images.
IMAGE_TO_IMAGE, NOISE = "image-to-image", "noise"
FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "generator.safetensors"
ONNX_FILE = "generator.onnx"
ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| accepted when an export is verified
# ... for a net with GroupNorm over whole images (AnimeGANv2), which onnxruntime sums in another order (~2e-4
# apart): an eighth of an 8-bit level (2/255 in [-1, 1]), so no served pixel changes by more than rounding.
ONNX_TOLERANCE_GROUPNORM = 1e-3
ONNX_INPUT, ONNX_OUTPUT = "image", "output"
ONNX_DYNAMIC_AXES = {"0": "batch", "2": "height", "3": "width"}


# A package name is one folder name on every store: the project's one rule for names (storage.check_name).
_NAME = storage.NAME_PATTERN


class PackageError(ValueError):
    """A model package cannot be written or trusted: bad name, tampered file, unknown format, missing extra."""


# ------------------------------------------------------------------------------------------- locations


def package_uri(store_uri: str, name: str) -> str:
    """``<store>/models/<name>`` for a valid package name."""
    if isinstance(name, str) and name.endswith(".tmp"):
        raise PackageError(f"invalid model name {name!r}: names ending in .tmp are exports in progress")
    return storage.join(store_uri, "models", storage.check_name(name, "model name", PackageError))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ checkpoints


def _rebuilt_exactly(generator: nn.Module, spec: dict) -> nn.Module:
    """The network rebuilt from ``spec`` alone, checked to hold the same weights and compute the same
    output at the native size, so that a package never describes its generator wrongly."""
    rebuilt = build_generator(spec["class"], spec["args"])
    rebuilt.load_state_dict(generator.state_dict())  # strict: same parameter and buffer names and shapes
    rebuilt.eval()
    x = _example_input(spec)
    with torch.no_grad():
        if not torch.equal(rebuilt(x), generator(x)):
            raise PackageError(f"{spec['class']}({spec['args']}) does not reproduce the recipe's generator")
    return rebuilt


def _example_input(spec: dict) -> torch.Tensor:
    """A seeded input for one sample of a generator described by ``spec`` (a generator_spec)."""
    g = torch.Generator().manual_seed(0)
    if spec["kind"] == NOISE:
        return torch.randn(1, spec["input"]["latent_dim"], generator=g)
    size = spec["native_size"]
    return torch.rand(1, spec["input"]["channels"], size, size, generator=g) * 2 - 1


def find_evaluation(checkpoint_uri: str, options: storage.StoreOptions | None = None,
                    direction: str = "") -> dict | None:
    """The evaluation report of this checkpoint's ``direction``, if one sits where the CLI writes them:
    ``<ckpt>_eval/`` (``ganime evaluate``), or ``<run>/eval/`` (``ganime train --evaluate``) when it names this
    checkpoint; a recipe with several directions has one report per direction there (``<ckpt>_eval/a2b/``)."""
    ckpt = storage.join(checkpoint_uri)
    report = ("metrics.json",) if not direction else (direction, "metrics.json")
    beside = storage.join(ckpt + "_eval", *report)
    in_run = storage.join(ckpt.rsplit("/", 1)[0], "eval", *report)
    for uri, must_name_it in ((beside, False), (in_run, True)):
        if not storage.exists(uri, options):
            continue
        record = storage.read_json(uri, options)
        named = record.get("checkpoint")
        if must_name_it and not (named and storage.join(str(named).rstrip("/")) == ckpt):
            continue
        return {**record, "report": uri}
    return None


def _is_fid(key: str, prefix: str) -> bool:
    """An FID value (``val_fid``, ``val_fid_a2b``), not the id of the weights that made it."""
    return (key == prefix or key.startswith(prefix + "_")) and not key.endswith("_backbone")


def _labelled_fid(metrics: dict, fid_key: str, has_backbone: bool, where: str) -> dict:
    """``metrics`` without the FIDs that do not say which Inception weights produced them (not comparable)."""
    unlabelled = [k for k in metrics if _is_fid(k, fid_key)] if not has_backbone else []
    if unlabelled:
        warnings.warn(f"{where}: {', '.join(unlabelled)} without its FID backbone id left out of the package",
                      UserWarning, stacklevel=3)
    return {k: v for k, v in metrics.items() if k not in unlabelled}


def _package_metrics(checkpoint_metrics: dict, evaluation: dict | None) -> dict:
    """The checkpoint's validation metrics (every direction's: they describe the checkpoint) and the
    package's own direction's evaluation."""
    validation = {k: v for k, v in (checkpoint_metrics or {}).items() if k.startswith("val_")}
    out = {"validation": _labelled_fid(validation, "val_fid", bool(validation.get("val_fid_backbone")),
                                       "checkpoint metrics")}
    if evaluation is not None:
        backbone = evaluation.get("fid_backbone")  # write_report's {"name", "sha256", ...}, or a bare name
        named = bool(backbone.get("name")) if isinstance(backbone, dict) else bool(backbone)
        out["evaluation"] = _labelled_fid(dict(evaluation), "fid", named, "evaluation")
    return out


# ------------------------------------------------------------------------------------------------- ONNX


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PackageError(f"ONNX export needs {', '.join(missing)}: pip install 'ray-ganime[export]'")


def _export_onnx(model: nn.Module, spec: dict) -> tuple[bytes, dict]:
    """(ONNX bytes, the model.json entry) for the any-size ``model``, verified once with onnxruntime."""
    import onnx
    import onnxruntime
    from torch.export import Dim

    channels, size = spec["input"]["channels"], spec["native_size"]
    # Batch 2 and sizes that are no multiple of anything: an example of 1 (or a multiple) could be specialised.
    example = torch.zeros(2, channels, size + 3, size // 2 + 5)
    check_shape = (1, channels, size + 13, size // 2 + 7)  # odd, and not the example's size
    with tempfile.TemporaryDirectory(prefix="ganime-onnx-") as folder:
        path = os.path.join(folder, ONNX_FILE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's notes on the trace, not the user's business
            torch.onnx.export(model, (example,), path, dynamo=True, verbose=False, external_data=False,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_shapes={"x": {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}})
        with open(path, "rb") as f:
            data = f.read()
    proto = onnx.load_from_string(data)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    x = torch.rand(*check_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {ONNX_INPUT: x.numpy()})[0]
    diff = float(abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    tolerance = onnx_tolerance(model)
    if diff > tolerance:
        raise PackageError(f"ONNX export differs from PyTorch on a {check_shape} input: max |diff| {diff:.3g} "
                           f"> {tolerance} (output shape {got.shape} vs {expected.shape})")
    entry = {"file": ONNX_FILE, "sha256": _sha256(data), "bytes": len(data), "opset": int(opset),
             "input": ONNX_INPUT, "output": ONNX_OUTPUT,
             "dynamic_axes": {ONNX_INPUT: ONNX_DYNAMIC_AXES, ONNX_OUTPUT: ONNX_DYNAMIC_AXES},
             "verified": {"input_shape": list(check_shape), "max_abs_diff": diff, "tolerance": tolerance}}
    return data, entry


def onnx_tolerance(model: nn.Module) -> float:
    return ONNX_TOLERANCE_GROUPNORM if any(isinstance(m, nn.GroupNorm) for m in model.modules()) else ONNX_TOLERANCE


# ------------------------------------------------------------------------------------------------ export


def _weights_bytes(net: nn.Module) -> bytes:
    from safetensors.torch import save

    tensors = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in net.state_dict().items()}
    return save(tensors, metadata={"format": "pt"})


def _refuse_existing(uri: str, overwrite: bool, options: storage.StoreOptions | None) -> None:
    if not overwrite and storage.exists(storage.join(uri, MANIFEST), options):
        raise FileExistsError(f"{uri}: a model package with this name exists (pass --overwrite / "
                              f"overwrite=True to replace it)")


def _clear(uri: str, options: storage.StoreOptions | None) -> None:
    """Empty the package folder: model.json first, so that an interrupted replace leaves an incomplete
    package (never listed or loaded) rather than an old manifest over new files; leftovers of a failed
    export and an old ONNX file go too."""
    storage.remove(storage.join(uri, MANIFEST), options=options)
    if storage.exists(uri, options):
        storage.remove(uri, recursive=True, options=options)


def package_name(name: str, direction: str) -> str:
    """The package of one direction: ``NAME`` for a recipe's sole generator, else ``NAME-<direction>``."""
    return f"{name}-{direction}" if direction else name


def _chosen_directions(recipe, wanted: list[str] | None, checkpoint: str) -> list[str]:
    """``wanted`` (None: every direction), checked against the recipe's directions."""
    available = list(recipe.directions())
    wanted = available if wanted is None else ["" if d is None else d for d in wanted]
    unknown = [d for d in wanted if d not in available]
    if unknown:
        names = ", ".join(repr(d) for d in available if d) or "none (one generator: give no direction)"
        raise PackageError(f"{checkpoint}: {recipe.name} has no direction {unknown[0]!r}; its directions: {names}")
    return list(dict.fromkeys(wanted))


class _Checkpoint(NamedTuple):
    """A checkpoint opened for export: its URI, meta, recipe (holding the trained networks) and what a package
    records of its training."""

    uri: str
    meta: dict
    recipe: Any
    training: dict

    @classmethod
    def open(cls, checkpoint_uri: str, options: storage.StoreOptions | None) -> "_Checkpoint":
        uri = storage.join(checkpoint_uri)
        state, meta = checkpoints.load(uri, options)
        recipe = checkpoints.recipe_of(state)
        training = {"epoch": meta.get("epoch", state.get("epoch")),
                    "global_step": meta.get("global_step", state.get("global_step")),
                    "config": recipe.cfg.model_dump(mode="json"),
                    **({"pretrained": meta["pretrained"]} if meta.get("pretrained") else {})}
        return cls(uri, meta, recipe, training)

    def export(self, direction: str, name: str, store_uri: str, options: storage.StoreOptions | None,
               onnx: bool, evaluation: dict | None, overwrite: bool) -> str:
        spec = {**self.recipe.generator_spec(direction), "direction": direction}
        net = _rebuilt_exactly(self.recipe.generator(direction).eval(), spec)
        if evaluation is None:
            evaluation = find_evaluation(self.uri, options, direction)
        return write_package(net, spec, name, store_uri, recipe=self.recipe.cfg.recipe, training=self.training,
                             metrics=_package_metrics(self.meta.get("metrics") or {}, evaluation), source=self.uri,
                             options=options, onnx=onnx, overwrite=overwrite)


def export_packages(checkpoint_uri: str, name: str, store_uri: str, options: storage.StoreOptions | None = None,
                    onnx: bool = False, evaluations: dict[str, dict] | None = None, overwrite: bool = False,
                    directions: list[str] | None = None) -> dict[str, str]:
    """One model package per generator of a checkpoint (its recipe's ``directions()``, or only ``directions``):
    ``NAME`` for a recipe with one generator, ``NAME-a2b`` / ``NAME-b2a`` for one with several. Returns
    {direction: package URI}. ``evaluations``: {direction: an evaluation's metrics.json record}; a direction
    without one looks beside the checkpoint (``find_evaluation``). ``onnx``: also ONNX graphs (the ``export``
    extra)."""
    package_uri(store_uri, name)  # a bad name fails before anything is read
    if onnx:
        _require_onnx()
    source = _Checkpoint.open(checkpoint_uri, options)
    chosen = _chosen_directions(source.recipe, directions, source.uri)
    names = {d: package_name(name, d) for d in chosen}
    for package in names.values():  # before the (slow) work, and again just before writing each
        _refuse_existing(package_uri(store_uri, package), overwrite, options)
    return {d: source.export(d, names[d], store_uri, options, onnx, (evaluations or {}).get(d), overwrite)
            for d in chosen}


def export_package(checkpoint_uri: str, name: str, store_uri: str, options: storage.StoreOptions | None = None,
                   onnx: bool = False, evaluation: dict | None = None, overwrite: bool = False,
                   direction: str | None = None) -> str:
    """Writes one generator of a checkpoint as model package ``name`` under ``<store_uri>/models/``; returns its
    URI. ``direction``: which generator, for a recipe with several (``recipe.directions()``; ``export_packages``
    writes them all, as ``NAME-<direction>``). ``evaluation``: an evaluation's metrics.json record; None looks
    for one beside the checkpoint (``find_evaluation``). ``onnx``: also an ONNX graph (needs the ``export``
    extra)."""
    uri = package_uri(store_uri, name)
    if onnx:
        _require_onnx()  # before anything is read or written
    _refuse_existing(uri, overwrite, options)  # before the (slow) work, and again just before writing
    source = _Checkpoint.open(checkpoint_uri, options)
    several = [d for d in source.recipe.directions() if d]
    if direction is None and several:
        raise PackageError(f"{source.uri}: {source.recipe.name} has several generators ({', '.join(several)}): "
                           f"name one with direction=, or export them all with export_packages")
    direction, = _chosen_directions(source.recipe, [direction], source.uri)
    return source.export(direction, name, store_uri, options, onnx, evaluation, overwrite)


def write_package(net: nn.Module, spec: dict, name: str, store_uri: str, *, recipe: str,
                  training: dict | None = None, metrics: dict | None = None, source: str | None = None,
                  options: storage.StoreOptions | None = None, onnx: bool = False, overwrite: bool = False) -> str:
    """Writes ``net`` (rebuildable from ``spec``, a recipe's ``generator_spec()``) as package ``name``."""
    uri = package_uri(store_uri, name)
    if onnx and spec["kind"] != IMAGE_TO_IMAGE:
        raise PackageError(f"ONNX export is for image-to-image generators, not {spec['kind']!r} ones")
    weights = _weights_bytes(net)
    onnx_data, onnx_entry = None, None
    if onnx:
        _require_onnx()
        onnx_data, onnx_entry = _export_onnx(PadToMultiple(net, spec["size_multiple"]).eval(), spec)

    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "recipe": recipe,
        "kind": spec["kind"], "direction": spec.get("direction", ""),
        "network": {"class": spec["class"], "args": spec["args"]},
        "input": spec["input"], "output": spec["output"],
        "native_size": spec["native_size"], "size_multiple": spec["size_multiple"],
        "weights": {"file": WEIGHTS, "sha256": _sha256(weights), "bytes": len(weights),
                    "parameters": count_parameters(net), "dtype": "float32"},
        "onnx": onnx_entry,
        "training": training or {},
        "metrics": metrics or {},
        "source_checkpoint": source,
        "created": _now(),
        "ray_ganime_version": __version__,
    }
    _refuse_existing(uri, overwrite, options)
    _clear(uri, options)
    storage.write_bytes(storage.join(uri, WEIGHTS), weights, options)
    if onnx_data is not None:
        storage.write_bytes(storage.join(uri, ONNX_FILE), onnx_data, options)
    storage.write_json(storage.join(uri, MANIFEST), record, options)  # last: now the package exists
    return uri


def package_source(meta: dict) -> dict[str, Any]:
    """Where a package's weights come from: trained here (its recipe), or imported from another project's
    checkpoint (that project, the file's name and sha256; not where the file lay)."""
    training = meta.get("training") or {}
    if "imported_from" not in training:
        return {"trained": meta.get("recipe")}
    return {"imported": training.get("source_format"), "file": str(training["imported_from"]).rsplit("/", 1)[-1],
            "sha256": training.get("source_sha256")}


# ------------------------------------------------------------------------------------------------ import


# Checkpoint formats `ganime import` reads: the code that wrote them.
IMPORT_SOURCES = {"animegan2": "bryandlee/animegan2-pytorch", "pix2pix": "junyanz/pytorch-CycleGAN-and-pix2pix",
                  "cyclegan": "junyanz/pytorch-CycleGAN-and-pix2pix"}
# junyanz's --netG choices: our class, its arguments, the crop size its training used.
JUNYANZ_NETS = {"unet_256": ("UNetGenerator", {"num_downs": 8}, 256),
                "unet_128": ("UNetGenerator", {"num_downs": 7}, 128),
                "resnet_9blocks": ("ResNetGenerator", {"n_blocks": 9}, 256),
                "resnet_6blocks": ("ResNetGenerator", {"n_blocks": 6}, 256)}
# What train.py of that code base uses when --netG / --norm are not given.
JUNYANZ_DEFAULTS = {"pix2pix": ("unet_256", "batch"), "cyclegan": ("resnet_9blocks", "instance")}


def _read_checkpoint(path_or_uri: str, name: str, store_uri: str, options: storage.StoreOptions | None,
                     onnx: bool, overwrite: bool) -> tuple[str, bytes, dict]:
    """(source URI, file bytes, state dict) of a checkpoint to import as package ``name``, read with
    ``weights_only=True`` (no code runs) once the package name, ONNX support and ``overwrite`` allow writing
    it; a PackageError unless it is a mapping of names to tensors."""
    import io

    uri = package_uri(store_uri, name)  # a bad name fails before anything is read
    if onnx:
        _require_onnx()
    _refuse_existing(uri, overwrite, options)
    source = storage.join(path_or_uri)
    data = storage.read_bytes(source, options)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, another format, or pickled objects weights_only refuses
        raise PackageError(f"{source}: not a PyTorch checkpoint that loads with weights_only=True "
                           f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    if not isinstance(state, dict):
        raise PackageError(f"{source}: not a state dict (a mapping of names to tensors) but a {type(state).__name__}")
    odd = [f"{k!r} ({type(v).__name__})" for k, v in state.items() if not (isinstance(k, str) and
                                                                          isinstance(v, torch.Tensor))]
    if odd:
        raise PackageError(f"{source}: not a state dict: entries that are not tensors: {', '.join(odd[:5])}")
    return source, data, state


def _checked_state_dict(state: dict, net: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """``state`` if it is exactly ``net``'s state dict (names and shapes), else a PackageError naming what is
    missing, unexpected or mis-shaped."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    problems = [f"{what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for what, keys in
                (("missing keys:", missing), ("unexpected keys:", unexpected), ("mis-shaped:", misshaped)) if keys]
    if problems:
        raise PackageError(f"{source}: not the state dict of {type(net).__name__}: {'; '.join(problems)}")
    return state


def _write_imported(net: nn.Module, spec: dict, name: str, store_uri: str, kind: str, source: str, data: bytes,
                    options: storage.StoreOptions | None, onnx: bool, overwrite: bool) -> str:
    from ray_ganime.recipes.base import image_side

    spec.update(kind=IMAGE_TO_IMAGE, direction="", input=image_side("A"), output=image_side("B"),
                size_multiple=net.size_multiple)
    training = {"imported_from": source, "source_format": IMPORT_SOURCES[kind], "source_sha256": _sha256(data)}
    recipe = "animeganv2" if kind == "animegan2" else kind  # the recipe that trains this kind of package here
    return write_package(net.eval(), spec, name, store_uri, recipe=recipe, training=training, source=source,
                         options=options, onnx=onnx, overwrite=overwrite)


def _check_native_size(native_size: int, multiple: int) -> None:
    if not 1 <= native_size <= MAX_SIDE or native_size % multiple:
        raise PackageError(f"native_size must be a multiple of {multiple} in 1..{MAX_SIDE}, got {native_size}")


def import_animegan2(path_or_uri: str, name: str, store_uri: str, options: storage.StoreOptions | None = None,
                     overwrite: bool = False, align_corners: bool = True, native_size: int | None = None,
                     onnx: bool = False) -> str:
    """Writes a bryandlee/animegan2-pytorch generator checkpoint (``face_paint_512_v2.pt``, ``paprika.pt``, ...:
    a state dict saved with ``torch.save``; local path or s3://) as model package ``name``; returns its URI.

    The file must hold exactly the 77 tensors of ``nets.AnimeGANv2Generator``; anything else is a PackageError
    that names the missing, unexpected or mis-shaped keys, and nothing is written. ``align_corners``: the resize
    the outputs are computed with (the port's released weights were made with True); ``native_size``: the size
    the package says it was trained at (default 512, the face_paint weights')."""
    from ray_ganime.nets import AnimeGANv2Generator

    net = AnimeGANv2Generator(align_corners=align_corners)
    native_size = 512 if native_size is None else native_size  # the face_paint_512 weights'
    _check_native_size(native_size, net.size_multiple)
    source, data, state = _read_checkpoint(path_or_uri, name, store_uri, options, onnx, overwrite)
    net.load_state_dict(_checked_state_dict(state, net, source), strict=True)
    spec = {"class": "AnimeGANv2Generator", "args": {"align_corners": bool(align_corners)},
            "native_size": native_size}
    return _write_imported(net, spec, name, store_uri, "animegan2", source, data, options, onnx, overwrite)


def import_junyanz(kind: str, path_or_uri: str, name: str, store_uri: str,
                   options: storage.StoreOptions | None = None, *, netG: str | None = None, ngf: int | None = None,
                   norm: str | None = None, native_size: int | None = None, overwrite: bool = False,
                   onnx: bool = False) -> str:
    """Writes a junyanz/pytorch-CycleGAN-and-pix2pix generator (``latest_net_G.pth``, ``latest_net_G_A.pth``: the
    state dict of its ``UnetGenerator`` / ``ResnetGenerator``) as package ``name`` of our ``UNetGenerator`` /
    ``ResNetGenerator``, whose canonical key maps rename every tensor; returns its URI.

    ``kind`` ("pix2pix" or "cyclegan") sets the defaults of that code's train.py (``unet_256`` + batch norm,
    ``resnet_9blocks`` + instance norm). Channels, ``ngf`` (unless given) and ResNet dropout layers are read off
    the file; a ``module.`` prefix (DataParallel) is dropped. A file of another ``netG`` or norm, or a generator
    that is not RGB -> RGB (serving's), is a PackageError naming what does not match; nothing is written."""
    from ray_ganime.nets import build_generator

    if kind not in JUNYANZ_DEFAULTS:
        raise PackageError(f"unknown junyanz model kind {kind!r} (expected one of {sorted(JUNYANZ_DEFAULTS)})")
    netG, norm = netG or JUNYANZ_DEFAULTS[kind][0], norm or JUNYANZ_DEFAULTS[kind][1]
    if netG not in JUNYANZ_NETS:
        raise PackageError(f"unknown --netG {netG!r} (expected one of {', '.join(JUNYANZ_NETS)})")
    if norm not in ("batch", "instance"):  # their code has no bias with "none", ours keeps one: never the same
        raise PackageError(f"unknown --norm {norm!r} (expected batch or instance)")
    cls, args, trained_at = JUNYANZ_NETS[netG]
    unet = cls == "UNetGenerator"
    multiple = 2 ** args["num_downs"] if unet else 4
    native_size = max(trained_at, multiple) if native_size is None else native_size
    _check_native_size(native_size, multiple)
    source, data, state = _read_checkpoint(path_or_uri, name, store_uri, options, onnx, overwrite)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    first = "model.model.0.weight" if unet else "model.1.weight"
    if first not in state or state[first].dim() != 4:
        raise PackageError(f"{source}: not a {netG} state dict: no {first} (is it another --netG?)")
    width, in_channels = state[first].shape[:2]
    args = {"in_channels": int(in_channels), "out_channels": 3, "ngf": ngf or int(width), **args, "norm": norm,
            # ResNet blocks with dropout shift their second conv from conv_block.5 to .6 (a norm's 1-D weight without)
            "dropout": 0.5 if unet or any(k.endswith("conv_block.6.weight") and v.dim() == 4
                                          for k, v in state.items()) else 0.0}
    net = build_generator(cls, args)
    out_key = "model.model.3.weight" if unet else net.canonical_key_map()["model.out.conv.weight"]
    if out_key in state and state[out_key].dim() == 4:  # the output convolution's (ConvTranspose: in, out, ...)
        args["out_channels"] = int(state[out_key].shape[1 if unet else 0])
        net = build_generator(cls, args)
    try:
        net.load_canonical_state_dict(state)
    except ValueError as e:
        raise PackageError(f"{source}: {e} (a --netG {netG}, --norm {norm} file was expected)") from None
    if (args["in_channels"], args["out_channels"]) != (3, 3):
        raise PackageError(f"{source}: serving takes and gives RGB; this generator maps {args['in_channels']} "
                           f"channels to {args['out_channels']}")
    spec = {"class": cls, "args": args, "native_size": native_size}
    return _write_imported(net, spec, name, store_uri, kind, source, data, options, onnx, overwrite)


# ------------------------------------------------------------------------------------ the manifest's schema

# What a model.json may describe, so that checking one takes milliseconds and loading one a bounded amount of
# memory whatever the file says. The parameter budget is the caller's (serve.max_parameters).
MAX_SIDE = 8192  # native_size and size_multiple (images.MAX_PIXELS is 8192 x 8192)
MAX_CHANNELS = 4
MAX_LATENT_DIM = 8192
MAX_MODULES = 2048  # layers one network may build (the Pix2Pix U-Net at 256 px has about 100)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # keys this version does not rely on are no error


class _Network(_Open):
    class_: str = Field(alias="class")
    args: dict[str, Any]


class _Weights(_Open):
    file: str  # checked against _NAME when it is read
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parameters: int = Field(ge=0)


class _Preprocess(BaseModel):
    """How serving prepares an upload before the generator (as training prepared that side's images). Unknown
    keys are errors: a step this version would skip would feed the generator the wrong input."""

    model_config = ConfigDict(extra="forbid")
    view: str
    lineart_target: float | None = Field(None, gt=0, lt=255)

    @field_validator("view")
    @classmethod
    def _known_view(cls, view: str) -> str:
        if view not in transforms.VIEWS:
            raise ValueError(f"unknown view {view!r} (this ray-ganime prepares {', '.join(transforms.VIEWS)})")
        return view


class _Side(_Open):
    channels: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    latent_dim: int | None = Field(None, ge=1, le=MAX_LATENT_DIM)
    preprocess: _Preprocess | None = None


class Manifest(_Open):
    """The part of model.json that loading and serving rely on."""

    kind: Literal[IMAGE_TO_IMAGE, NOISE]
    network: _Network
    input: _Side
    output: _Side
    native_size: int = Field(ge=1, le=MAX_SIDE)
    size_multiple: int = Field(ge=1, le=MAX_SIDE)
    weights: _Weights

    @model_validator(mode="after")
    def _sides_described(self) -> "Manifest":
        needed = "channels" if self.kind == IMAGE_TO_IMAGE else "latent_dim"
        if getattr(self.input, needed) is None:
            raise ValueError(f"input.{needed} is missing (a {self.kind} model)")
        if self.output.channels is None:
            raise ValueError("output.channels is missing")
        if self.input.preprocess is not None and self.kind != IMAGE_TO_IMAGE:
            raise ValueError(f"input.preprocess prepares images; a {self.kind} model takes none")
        return self

    def example_shape(self) -> tuple[int, ...]:
        if self.kind == IMAGE_TO_IMAGE:
            return 1, self.input.channels, self.native_size, self.native_size
        return 1, self.input.latent_dim


@contextlib.contextmanager
def _at_most_modules(limit: int):
    """PackageError once this thread has built more than ``limit`` modules: no model.json (a U-Net with
    num_downs 10000) makes checking it slow. Other threads (a replica loading a model meanwhile) are not counted."""
    thread, built = threading.get_ident(), itertools.count(1)

    def count(parent: nn.Module, name: str, module: nn.Module | None) -> None:
        if threading.get_ident() == thread and next(built) > limit:
            raise PackageError(f"the network has more than {limit} layers")

    handle = nn.modules.module.register_module_module_registration_hook(count)
    try:
        yield
    finally:
        handle.remove()


@functools.lru_cache(maxsize=256)
def _network_check(class_name: str, args_json: str, example_shape: tuple[int, ...],
                   output_shape: tuple[int, ...]) -> tuple[int, str | None]:
    """(parameters, None) of the network, or (0, why it is unusable). Built and run on the meta device: shapes
    only, nothing allocated, so a network of a billion parameters costs no memory to refuse."""
    try:
        with _at_most_modules(MAX_MODULES), torch.device("meta"):
            net = build_generator(class_name, json.loads(args_json)).eval()
            parameters = count_parameters(net)
            got = tuple(net(torch.empty(example_shape)).shape)
    except Exception as e:  # constructors and forward passes raise many types for impossible arguments
        return 0, f"network {class_name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"[:300]
    if got != output_shape:
        return 0, f"network {class_name} maps {example_shape} to {got}, not to {output_shape} as described"
    return parameters, None


def check_manifest(meta: dict, max_parameters: int | None = None) -> Manifest:
    """``meta`` (a model.json) checked without loading any weights: format and version, the schema (kind, sizes
    and channels within bounds), a network class in ``nets.GENERATORS`` that accepts its arguments and maps
    the described input to the described output, ``weights.parameters`` equal to its parameter count, and
    that count at most ``max_parameters``. Raises PackageError with a reason that names no file."""
    if meta.get("format") != FORMAT:
        raise PackageError(f"not a {FORMAT} manifest (format {meta.get('format')!r})")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise PackageError(f"format version {meta.get('format_version')!r} is newer than this ray-ganime reads "
                           f"({FORMAT_VERSION}); upgrade ray-ganime")
    try:
        manifest = Manifest.model_validate(meta)
    except ValidationError as e:
        raise PackageError("; ".join(f"{'.'.join(map(str, err['loc'])) or MANIFEST}: "
                                     f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors()[:3])) from None
    net = manifest.network
    size = manifest.native_size
    parameters, problem = _network_check(net.class_, json.dumps(net.args, sort_keys=True), manifest.example_shape(),
                                         (1, manifest.output.channels, size, size))
    if problem:
        raise PackageError(problem)
    if manifest.weights.parameters != parameters:
        raise PackageError(f"weights.parameters is {manifest.weights.parameters} but {net.class_} with these "
                           f"arguments has {parameters}")
    if max_parameters is not None and parameters > max_parameters:
        raise PackageError(f"{net.class_} has {parameters:,} parameters, over the limit of {max_parameters:,} "
                           f"(serve.max_parameters)")
    return manifest


# ------------------------------------------------------------------------------------------ load and list


def package_meta(uri: str, options: storage.StoreOptions | None = None, max_parameters: int | None = None) -> dict:
    """The model.json of the package at ``uri``, after ``check_manifest``. PackageError: the package is unusable;
    StorageError: the store could not be read."""
    uri = storage.join(uri)
    manifest = storage.join(uri, MANIFEST)
    if not storage.exists(manifest, options):
        raise FileNotFoundError(f"{uri}: not a model package (no {MANIFEST}; an export that did not finish?)")
    try:
        meta = json.loads(storage.read_bytes(manifest, options))
    except ValueError as e:
        raise PackageError(f"{manifest}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise PackageError(f"{manifest}: not a JSON object")
    try:
        check_manifest(meta, max_parameters)
    except PackageError as e:
        raise PackageError(f"{manifest}: {e}") from None
    return meta


def _package_file(uri: str, entry: dict, options: storage.StoreOptions | None) -> bytes:
    """A file a manifest names, checked against the sha256 recorded there."""
    name = entry.get("file")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PackageError(f"{uri}/{MANIFEST}: bad file name {name!r}")
    file_uri = storage.join(uri, name)
    if not storage.exists(file_uri, options):  # the package's fault, not the store's (a StorageError)
        raise PackageError(f"{file_uri}: missing")
    data = storage.read_bytes(file_uri, options)
    digest = _sha256(data)
    if digest != entry.get("sha256"):
        raise PackageError(f"{file_uri}: sha256 {digest} does not match {entry.get('sha256')} in {MANIFEST} "
                           f"(file changed or corrupted after export)")
    return data


def load_package(uri: str, device: str | torch.device = "cpu", options: storage.StoreOptions | None = None,
                 max_parameters: int | None = None) -> tuple[nn.Module, dict]:
    """(generator in eval mode on ``device``; its model.json plus ``"uri"``).

    No pickle and no training code: JSON, safetensors and ``nets.GENERATORS``. An image-to-image module
    maps (N, C, H, W) of any size in ``meta["input"]["value_range"]`` to (N, C', H, W); at ``native_size``
    its output is bitwise the checkpoint generator's (on the same device). A noise module maps latents
    (N, ``meta["input"]["latent_dim"]``) to (N, C', native_size, native_size). The manifest is checked
    (``check_manifest``) before anything is allocated."""
    from safetensors.torch import load

    uri = storage.join(uri)
    meta = package_meta(uri, options, max_parameters)
    data = _package_file(uri, meta["weights"], options)
    try:
        net = build_generator(meta["network"]["class"], meta["network"]["args"])
        net.load_state_dict(load(data))
    except Exception as e:  # sha256-checked, so written that way: the export itself was wrong
        raise PackageError(f"{uri}: the weights do not fit the network: {str(e).splitlines()[0][:300]}") from None
    if meta["kind"] == IMAGE_TO_IMAGE:
        net = PadToMultiple(net, meta["size_multiple"])
    model = net.to(device).eval()
    return model, {**meta, "uri": uri}


class Listing(NamedTuple):
    """The store's packages: ``packages`` the model.json (plus ``"uri"``) of each usable one; ``broken`` one
    ``{"name", "uri", "reason"}`` for each whose model.json fails ``check_manifest`` (the reason names no path)."""

    packages: list[dict]
    broken: list[dict]


def scan_packages(store_uri: str, options: storage.StoreOptions | None = None,
                  max_parameters: int | None = None) -> Listing:
    """Every complete package under ``<store_uri>/models``, by name. StorageError when the store cannot be
    listed; one package that cannot be read or trusted is reported in ``broken``, never an error for the rest."""
    root = storage.join(store_uri, "models")
    if not storage.exists(root, options):
        return Listing([], [])
    found, broken = [], []
    for uri in storage.listdir(root, options):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if not _NAME.match(name) or not storage.exists(storage.join(uri, MANIFEST), options):
            continue  # temp files, or an export still running (or one that failed)
        try:
            found.append({**package_meta(uri, options, max_parameters), "uri": uri})
        except (PackageError, storage.StorageError) as e:
            broken.append({"name": name, "uri": uri, "reason": str(e).replace(uri, name)})
    return Listing(sorted(found, key=lambda m: m["uri"]), broken)


def list_packages(store_uri: str, options: storage.StoreOptions | None = None,
                  max_parameters: int | None = None) -> list[dict]:
    """The model.json (plus ``"uri"``) of every usable package under ``<store_uri>/models``, by name; broken
    ones are left out with a warning (``scan_packages`` reports them)."""
    listing = scan_packages(store_uri, options, max_parameters)
    for package in listing.broken:
        warnings.warn(f"skipping {package['uri']}: {package['reason']}", UserWarning, stacklevel=2)
    return listing.packages
