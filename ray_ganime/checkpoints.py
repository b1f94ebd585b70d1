"""Checkpoint folders, written and read one way for training, evaluation, export and sweeps (no Ray here).

A checkpoint is a folder on a store (local or s3://); a run keeps its own as ``<run>/checkpoint_epoch_NNNN``:

    state.pt    nets, optimisers, LR schedulers, epoch, global step, RNG states, config (loaded weights_only)
    meta.json   recipe, epoch, global step, metrics, config, and ``files``: the size and sha256 of state.pt.
                Written last, so a checkpoint whose writing or upload stopped part-way fails the check.

``load`` checks a checkpoint against its meta before anything is unpickled; every failure is a
``CheckpointError``: one line naming the checkpoint and what is wrong. ``newest_valid`` finds the newest
checkpoint of a run that passes. Checkpoints written before ``files`` was recorded still load: with nothing to
compare, a state.pt that does not load is caught and named.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ray_ganime import storage

STATE_FILE, META_FILE = "state.pt", "meta.json"
_FOLDER = re.compile(r"^checkpoint_epoch_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, incomplete, truncated, altered, unreadable)."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.uri, self.reason = uri, reason

    def __reduce__(self):  # pickles whole (Ray ships a worker's exceptions to the driver)
        return CheckpointError, (self.uri, self.reason)


# ------------------------------------------------------------------------------------------------ names


def folder_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch:04d}"


def epoch_of(uri: str) -> int | None:
    """The epoch in a checkpoint folder's name (``.../checkpoint_epoch_0003`` -> 3); None for other names."""
    m = _FOLDER.match(uri.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def uri_of(store_uri: str, path: str) -> str:
    """The URI of a checkpoint that Ray reports as a filesystem path ("bucket/key" when the store is S3)."""
    return f"s3://{path}" if storage.is_remote(store_uri) and not path.startswith("s3://") else path


# ------------------------------------------------------------------------------------------------ write


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(folder: Path, state: dict, meta: dict) -> None:
    """state.pt, then meta.json recording its size and sha256, into a local folder."""
    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    files = {STATE_FILE: {"size": path.stat().st_size, "sha256": _sha256(path)}}
    (Path(folder) / META_FILE).write_text(json.dumps({**meta, "files": files}, indent=2, default=float))


# ------------------------------------------------------------------------------------------------- read


@contextlib.contextmanager
def _local(uri: str, options: storage.StoreOptions | None) -> Iterator[Path]:
    """A local folder holding the checkpoint at ``uri``: the folder itself, or a temporary download."""
    if not storage.is_remote(uri):
        yield Path(uri)
        return
    folder = tempfile.mkdtemp(prefix="ganime-ckpt-")
    try:
        storage.download(uri, folder, options)
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _checked_meta(folder: Path, uri: str) -> dict:
    """meta.json, once state.pt matches the size and sha256 it records."""
    state, meta_file = folder / STATE_FILE, folder / META_FILE
    if not state.is_file() and not meta_file.is_file():
        raise CheckpointError(uri, f"not a ray-ganime checkpoint (no {STATE_FILE})")
    if not meta_file.is_file():
        raise CheckpointError(uri, f"incomplete checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise CheckpointError(uri, f"{META_FILE} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(uri, f"{META_FILE} is not a JSON object")
    if not state.is_file():
        raise CheckpointError(uri, f"{STATE_FILE} is missing")
    want = (meta.get("files") or {}).get(STATE_FILE)
    if want is not None:
        if not (isinstance(want, dict) and isinstance(want.get("size"), int) and isinstance(want.get("sha256"), str)):
            raise CheckpointError(uri, f"{META_FILE} records {STATE_FILE} in an unknown form")
        size = state.stat().st_size
        if size != want["size"]:
            what = f"truncated ({size} of {want['size']} bytes)" if size < want["size"] else \
                f"{size} bytes, {META_FILE} records {want['size']}"
            raise CheckpointError(uri, f"{STATE_FILE} is {what}")
        if _sha256(state) != want["sha256"]:
            raise CheckpointError(uri, f"{STATE_FILE} does not match the sha256 in {META_FILE} (corrupt or altered)")
    return meta


def _torch_load(path: Path, uri: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever a damaged file makes torch raise (RuntimeError, UnpicklingError, EOFError, ...)
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(uri, f"{STATE_FILE} does not load ({type(e).__name__}: {detail})") from e


def load(uri: str, options: storage.StoreOptions | None = None) -> tuple[dict, dict]:
    """(state, meta) of the checkpoint at ``uri``, checked against its meta first."""
    uri = storage.join(uri)
    with _local(uri, options) as folder:
        meta = _checked_meta(folder, uri)
        return _torch_load(folder / STATE_FILE, uri), meta


def verify(uri: str, options: storage.StoreOptions | None = None) -> dict:
    """The meta of the checkpoint at ``uri`` if it can be trusted, else CheckpointError saying why. One without
    a recorded size and sha256 (older ray-ganime) is loaded to find out."""
    uri = storage.join(uri)
    with _local(uri, options) as folder:
        meta = _checked_meta(folder, uri)
        if not (meta.get("files") or {}).get(STATE_FILE):
            _torch_load(folder / STATE_FILE, uri)
        return meta


def recipe_of(state: dict, device: torch.device | str = "cpu"):
    """The recipe that wrote ``state``, holding its trained networks (optimisers left fresh)."""
    from ray_ganime.config import Config
    from ray_ganime.recipes import recipe_class

    cfg = Config.model_validate(state["config"])
    with torch.random.fork_rng(devices=[]):  # building a recipe initialises weights: leave the caller's RNG be
        recipe = recipe_class(cfg.recipe)(cfg, device, frozen=False)
    recipe.load_state_dict(state["recipe"], nets_only=True)
    return recipe


def load_generator(uri: str, device: torch.device | str = "cpu", options: storage.StoreOptions | None = None,
                   direction: str | None = None):
    """(generator in eval mode, the checkpoint's meta with "checkpoint": ``uri``) of a checkpoint folder.
    ``direction``: which of a recipe's generators (CycleGAN: "a2b" / "b2a"); None: its only one."""
    state, meta = load(uri, options)
    recipe = recipe_of(state, device)
    directions = recipe.directions()
    if direction is None:
        if len(directions) > 1:
            raise CheckpointError(uri, f"{recipe.name} has several generators: name one of {sorted(directions)}")
        direction = next(iter(directions))
    elif direction not in directions:
        raise CheckpointError(uri, f"{recipe.name} has no generator {direction!r}; it has {sorted(directions)}")
    return recipe.generator(direction).eval(), {**meta, "checkpoint": uri, "direction": direction}


# -------------------------------------------------------------------------------------------------- runs


def run_checkpoints(run_uri: str, options: storage.StoreOptions | None = None) -> list[str]:
    """URIs of a run's checkpoint folders, newest first (none when the run folder does not exist yet)."""
    if not storage.exists(run_uri, options):
        return []
    found = [(epoch_of(uri), uri) for uri in storage.listdir(run_uri, options)]
    return [uri for epoch, uri in sorted((f for f in found if f[0] is not None), reverse=True)]


@dataclass(frozen=True)
class Newest:
    """A run's newest checkpoint that passes ``verify`` (uri and meta None: the run has none yet) and why
    each newer one did not, newest first."""

    uri: str | None
    meta: dict | None
    skipped: list[CheckpointError] = field(default_factory=list)


def newest_valid(run_uri: str, options: storage.StoreOptions | None = None) -> Newest:
    """The newest checkpoint of a run that can be trusted; CheckpointError when it has some but none can."""
    skipped = []
    for uri in run_checkpoints(run_uri, options):
        try:
            return Newest(uri, verify(uri, options), skipped)
        except CheckpointError as e:
            skipped.append(e)
    if skipped:
        raise CheckpointError(storage.join(run_uri), f"no usable checkpoint; the newest: {skipped[0]} "
                              f"({len(skipped)} checked). Start another run name, or train.resume_from one you trust")
    return Newest(None, None)
