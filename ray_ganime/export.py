"""Model packages: a trained generator as a self-describing folder that serving loads without training code.

A package lives at ``<store>/models/<name>/``:

    generator.safetensors   the generator's state dict (float32 parameters and batch-norm buffers)
    generator.onnx          optional: the any-size generator (PadToMultiple) with dynamic batch/height/width
    model.json              what it is: network class and arguments, input/output channels and value range,
                            native size and size multiple, training config, validation/evaluation metrics
                            (each FID with its Inception weights' id), source checkpoint, sha256 of each file

``model.json`` is written last: a folder without it is an incomplete export and is neither listed nor
loaded. Loading reads JSON and safetensors only (no pickle) and rebuilds the network from
``nets.GENERATORS``, so it needs neither the recipe nor Ray; the weights' sha256 is checked first.

Data flow: train -> tune -> evaluate -> export -> serve. This module never imports Ray: reading a
checkpoint here goes through the store directly rather than through ``ray_ganime.train``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import re
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from ray_ganime import __version__, storage
from ray_ganime.nets import PadToMultiple, build_generator, count_parameters

__all__ = ["FORMAT", "FORMAT_VERSION", "IMAGE_TO_IMAGE", "NOISE", "PackageError", "export_package",
           "find_evaluation", "list_packages", "load_package", "package_meta", "package_uri", "write_package"]

FORMAT = "ray-ganime-model"
# Package kinds: what a generator consumes. Image-to-image generators take an image of any size (padded to
# size_multiple); noise generators take latents (input: latent_dim, distribution) and draw native_size images.
IMAGE_TO_IMAGE, NOISE = "image-to-image", "noise"
FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "generator.safetensors"
ONNX_FILE = "generator.onnx"
ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| accepted when an export is verified
ONNX_INPUT, ONNX_OUTPUT = "image", "output"
ONNX_DYNAMIC_AXES = {"0": "batch", "2": "height", "3": "width"}

# The files of a checkpoint folder (ray_ganime.train writes them; that module imports Ray, this one must not).
CHECKPOINT_STATE, CHECKPOINT_META = "state.pt", "meta.json"

# A package name is one folder name on every store: no separators, no leading dot (hidden/temp files).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PackageError(ValueError):
    """A model package cannot be written or trusted: bad name, tampered file, unknown format, missing extra."""


# ------------------------------------------------------------------------------------------- locations


def package_uri(store_uri: str, name: str) -> str:
    """``<store>/models/<name>`` for a valid package name."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".tmp"):
        raise PackageError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (at most 128 "
                           f"characters, starting with a letter or digit)")
    return storage.join(store_uri, "models", name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ checkpoints


def _read_checkpoint(uri: str, options: storage.StoreOptions | None) -> tuple[dict, dict]:
    """(state.pt without pickle, meta.json) of a checkpoint folder, read straight from the store."""
    state_uri = storage.join(uri, CHECKPOINT_STATE)
    if not storage.exists(state_uri, options):
        raise FileNotFoundError(f"{storage.join(uri)}: not a ray-ganime checkpoint (no {CHECKPOINT_STATE})")
    state = torch.load(io.BytesIO(storage.read_bytes(state_uri, options)), map_location="cpu", weights_only=True)
    return state, storage.read_json(storage.join(uri, CHECKPOINT_META), options)


def _checkpoint_generator(state: dict) -> tuple[nn.Module, dict, Any]:
    """(generator in eval mode, its generator_spec, the checkpoint's Config) via the recipe that trained it."""
    from ray_ganime.config import Config
    from ray_ganime.recipes import recipe_class

    cfg = Config.model_validate(state["config"])
    with torch.random.fork_rng(devices=[]):  # building a recipe initialises weights: leave the caller's RNG be
        recipe = recipe_class(cfg.recipe)(cfg, "cpu")
    recipe.load_state_dict(state["recipe"], nets_only=True)
    return recipe.generator().eval(), recipe.generator_spec(), cfg


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


def find_evaluation(checkpoint_uri: str, options: storage.StoreOptions | None = None) -> dict | None:
    """The evaluation report of this checkpoint, if one sits where the CLI writes them: ``<ckpt>_eval/``
    (``ganime evaluate``), or ``<run>/eval/`` (``ganime train --evaluate``) when it names this checkpoint."""
    ckpt = storage.join(checkpoint_uri)
    beside = storage.join(ckpt + "_eval", "metrics.json")
    in_run = storage.join(ckpt.rsplit("/", 1)[0], "eval", "metrics.json")
    for uri, must_name_it in ((beside, False), (in_run, True)):
        if not storage.exists(uri, options):
            continue
        report = storage.read_json(uri, options)
        named = report.get("checkpoint")
        if must_name_it and not (named and storage.join(str(named).rstrip("/")) == ckpt):
            continue
        return {**report, "report": uri}
    return None


def _labelled_fid(metrics: dict, fid_key: str, has_backbone: bool, where: str) -> dict:
    """``metrics`` without an FID that does not say which Inception weights produced it (not comparable)."""
    if fid_key in metrics and not has_backbone:
        warnings.warn(f"{where}: {fid_key} without its FID backbone id left out of the package", UserWarning,
                      stacklevel=3)
        return {k: v for k, v in metrics.items() if k != fid_key}
    return metrics


def _package_metrics(checkpoint_metrics: dict, evaluation: dict | None) -> dict:
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
    if diff > ONNX_TOLERANCE:
        raise PackageError(f"ONNX export differs from PyTorch on a {check_shape} input: max |diff| {diff:.3g} "
                           f"> {ONNX_TOLERANCE} (output shape {got.shape} vs {expected.shape})")
    entry = {"file": ONNX_FILE, "sha256": _sha256(data), "bytes": len(data), "opset": int(opset),
             "input": ONNX_INPUT, "output": ONNX_OUTPUT,
             "dynamic_axes": {ONNX_INPUT: ONNX_DYNAMIC_AXES, ONNX_OUTPUT: ONNX_DYNAMIC_AXES},
             "verified": {"input_shape": list(check_shape), "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE}}
    return data, entry


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


def export_package(checkpoint_uri: str, name: str, store_uri: str, options: storage.StoreOptions | None = None,
                   onnx: bool = False, evaluation: dict | None = None, overwrite: bool = False) -> str:
    """Writes the generator of a checkpoint as model package ``name`` under ``<store_uri>/models/``; returns
    its URI. ``evaluation``: an evaluation's metrics.json record; None looks for one beside the checkpoint
    (``find_evaluation``). ``onnx``: also an ONNX graph (needs the ``export`` extra)."""
    uri = package_uri(store_uri, name)
    if onnx:
        _require_onnx()  # before anything is read or written
    _refuse_existing(uri, overwrite, options)  # before the (slow) work, and again just before writing
    checkpoint = storage.join(checkpoint_uri)
    state, meta = _read_checkpoint(checkpoint, options)
    generator, spec, cfg = _checkpoint_generator(state)
    net = _rebuilt_exactly(generator, spec)
    if evaluation is None:
        evaluation = find_evaluation(checkpoint, options)
    training = {"epoch": meta.get("epoch", state.get("epoch")),
                "global_step": meta.get("global_step", state.get("global_step")),
                "config": cfg.model_dump(mode="json")}
    return write_package(net, spec, name, store_uri, recipe=cfg.recipe, training=training,
                         metrics=_package_metrics(meta.get("metrics") or {}, evaluation), source=checkpoint,
                         options=options, onnx=onnx, overwrite=overwrite)


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
        "kind": spec["kind"], "network": {"class": spec["class"], "args": spec["args"]},
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


# ------------------------------------------------------------------------------------------ load and list


def package_meta(uri: str, options: storage.StoreOptions | None = None) -> dict:
    """The model.json of the package at ``uri``, after checking that it is a package this code can read."""
    uri = storage.join(uri)
    manifest = storage.join(uri, MANIFEST)
    if not storage.exists(manifest, options):
        raise FileNotFoundError(f"{uri}: not a model package (no {MANIFEST}; an export that did not finish?)")
    meta = storage.read_json(manifest, options)
    if meta.get("format") != FORMAT:
        raise PackageError(f"{manifest}: not a {FORMAT} manifest (format {meta.get('format')!r})")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise PackageError(f"{manifest}: format version {meta.get('format_version')!r} is newer than this "
                           f"ray-ganime reads ({FORMAT_VERSION}); upgrade ray-ganime")
    return meta


def _package_file(uri: str, entry: dict, options: storage.StoreOptions | None) -> bytes:
    """A file a manifest names, checked against the sha256 recorded there."""
    name = entry.get("file")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PackageError(f"{uri}/{MANIFEST}: bad file name {name!r}")
    file_uri = storage.join(uri, name)
    data = storage.read_bytes(file_uri, options)
    digest = _sha256(data)
    if digest != entry.get("sha256"):
        raise PackageError(f"{file_uri}: sha256 {digest} does not match {entry.get('sha256')} in {MANIFEST} "
                           f"(file changed or corrupted after export)")
    return data


def load_package(uri: str, device: str | torch.device = "cpu",
                 options: storage.StoreOptions | None = None) -> tuple[nn.Module, dict]:
    """(generator in eval mode on ``device``; its model.json plus ``"uri"``).

    No pickle and no training code: JSON, safetensors and ``nets.GENERATORS``. An image-to-image module
    maps (N, C, H, W) of any size in ``meta["input"]["value_range"]`` to (N, C', H, W); at ``native_size``
    its output is bitwise the checkpoint generator's (on the same device). A noise module maps latents
    (N, ``meta["input"]["latent_dim"]``) to (N, C', native_size, native_size)."""
    from safetensors.torch import load

    uri = storage.join(uri)
    meta = package_meta(uri, options)
    state = load(_package_file(uri, meta["weights"], options))
    net = build_generator(meta["network"]["class"], meta["network"]["args"])
    net.load_state_dict(state)
    if meta["kind"] == IMAGE_TO_IMAGE:
        net = PadToMultiple(net, meta["size_multiple"])
    model = net.to(device).eval()
    return model, {**meta, "uri": uri}


def list_packages(store_uri: str, options: storage.StoreOptions | None = None) -> list[dict]:
    """The model.json (plus ``"uri"``) of every complete package under ``<store_uri>/models``, by name."""
    root = storage.join(store_uri, "models")
    if not storage.exists(root, options):
        return []
    found = []
    for uri in storage.listdir(root, options):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if not _NAME.match(name) or not storage.exists(storage.join(uri, MANIFEST), options):
            continue  # temp files, or an export still running (or one that failed)
        try:
            found.append({**package_meta(uri, options), "uri": uri})
        except (PackageError, storage.StorageError) as e:
            warnings.warn(f"skipping {uri}: {e}", UserWarning, stacklevel=2)
    return sorted(found, key=lambda m: m["uri"])
