"""Held-out evaluation of an image-to-image generator: SSIM and FID over a split, a report, a sample sheet.

Where each stage runs:

- Ray Data tasks: read + decode + resize to ``crop_size`` (``ShardData.dataset(split, train=False)``).
- One Ray Data actor per GPU (one on a CPU-only cluster), a callable class that holds the generator
  and the FID Inception network, each loaded once: generated = G(input) in eval mode, per-image SSIM
  against the target on uint8 (tf.image.ssim), Inception pool-3 features of the generated and of the
  target images. Rows leave the actor as ``id``, ``ssim``, ``feat_fake``/``feat_real`` (2048 float32)
  -- never the images, except a few PNG-encoded (input | output | target) triplets for the sample sheet.
  (On a CPU-only cluster Ray Data fuses the decode stage into this actor; with a GPU it stays apart.)
- The driver: streams those rows and accumulates SSIM and the feature moments in float64 (memory does
  not grow with the split: two 2048x2048 sums, plus the features themselves while there are fewer than
  1024 images), then FID = Fréchet distance of the two Gaussians.

Both FID sets are quantised the same way: the generated image goes through uint8 (as a saved PNG
would) before Inception, which sees ``uint8 / 255``. Inception runs in float32 even on CUDA (no bf16
autocast, no TF32: either would move the FID); only the generator uses bf16 autocast there. Both
nets run channels_last on CUDA.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import warnings
from typing import Any

import numpy as np
import ray
import torch

from ray_ganime import checkpoints, images, metrics, preview, storage, transforms
from ray_ganime.data import ShardData

__all__ = ["evaluate_generator", "write_report", "inception_features", "fid_from_features", "RANDOM_INIT_WARNING",
           "MAX_SAMPLES"]

RANDOM_INIT_WARNING = "RANDOM-INIT INCEPTION: not a real FID"
MAX_SAMPLES = 8  # (input, output, target) triplets kept for samples.png


class _EvalUDF:
    """The Ray Data actor: generator + Inception loaded once; per batch SSIM and features."""

    def __init__(self, generator: Any, fid_weights: str | None, use_gpu: bool, input_column: str,
                 target_column: str, num_samples: int = MAX_SAMPLES) -> None:
        # The generator arrives as an ObjectRef (ray.put once on the driver, so a large model is not
        # inlined in every actor's creation task); accept the module itself too.
        if isinstance(generator, (list, tuple)):
            generator = generator[0]
        if isinstance(generator, ray.ObjectRef):
            generator = ray.get(generator)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if use_gpu and self.device.type != "cuda":
            raise RuntimeError("evaluation actor was given a GPU but torch sees no CUDA device")
        cuda = self.device.type == "cuda"
        if cuda:  # true float32 convolutions for the features (cuDNN defaults to TF32, ~1e-3 off)
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        self.generator = generator.to(self.device, memory_format=self.memory_format).eval()
        self.generator.requires_grad_(False)
        self.inception, ident = metrics.load_fid_inception(fid_weights, self.device)
        self.inception = self.inception.to(memory_format=self.memory_format).eval()
        self.backbone = json.dumps(ident, sort_keys=True)
        self.input_column, self.target_column = input_column, target_column
        self.samples_left = num_samples
        self.reported = False

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return inception_features(self.inception, pixels, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs, targets = batch[self.input_column], batch[self.target_column]
        n = len(batch["id"])
        with torch.inference_mode():
            x = transforms.to_tensor(inputs, channels_last_memory=self.device.type == "cuda").to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                y = self.generator(x)
            fake = transforms.to_uint8(y.float())
            if fake.shape != targets.shape:
                raise ValueError(f"generator output {fake.shape} does not match the target batch {targets.shape}")
            feat_fake = self._features(fake)
            feat_real = self._features(targets)
        scores = np.asarray(metrics.ssim(fake, targets), np.float64).reshape(n)
        # A few triplets for the sample sheet, PNG-encoded side by side (lossless, small); b"" elsewhere.
        sample = np.full(n, b"", dtype=object)
        for i in range(min(n, self.samples_left)):
            sample[i] = images.encode_png(np.concatenate([inputs[i], fake[i], targets[i]], axis=1))
        self.samples_left -= min(n, self.samples_left)
        # Which Inception weights this actor really loaded, once per actor (the driver checks they agree).
        backbone = np.full(n, "", dtype=object)
        if n and not self.reported:
            backbone[0], self.reported = self.backbone, True
        return {"id": np.asarray(batch["id"], dtype=object), "ssim": scores,
                "feat_fake": feat_fake.astype(np.float32), "feat_real": feat_real.astype(np.float32),
                "sample": sample, "backbone": backbone}


def inception_features(inception: torch.nn.Module, pixels: np.ndarray, device: torch.device) -> np.ndarray:
    """Pool-3 features (N, 2048) of uint8 (N, H, W, 3) images, which Inception sees as ``uint8 / 255``."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=fmt).div_(255.0)
    with torch.inference_mode():
        return inception(x).float().cpu().numpy()  # float32 on purpose: no autocast here


class _Moments:
    """Streaming mean and covariance of (N, D) rows in float64, shifted by the first batch's mean so
    that the sums do not lose precision to a large common offset. While there are few rows it also
    keeps them (float32), for the exact low-rank FID below."""

    def __init__(self, keep_rows: int) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None
        self.keep_rows = keep_rows
        self.rows: list[np.ndarray] | None = []

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if not len(rows):
            return
        d = rows.astype(np.float64)
        if self.shift is None:
            self.shift = d.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((len(self.shift), len(self.shift)))
        d -= self.shift
        self.n += len(rows)
        self.sum += d.sum(axis=0)
        self.outer += d.T @ d
        if self.rows is not None:
            self.rows = self.rows + [np.array(rows, np.float32)] if self.n <= self.keep_rows else None

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 images, got {self.n}")
        m = self.sum / self.n
        cov = (self.outer - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, 0.5 * (cov + cov.T)


def _fid(fake: _Moments, real: _Moments) -> float:
    """``metrics.frechet_distance`` of the two feature Gaussians (float64).

    With fewer images than feature dimensions (the usual small test split: n1 + n2 - 1 < 2048) it is
    evaluated in an orthonormal basis Q of the span of the centred features of both sets and of the
    mean difference. That is exact, not an approximation: both covariances and mu1 - mu2 live in that
    span, so |mu1 - mu2|^2, the traces and the eigenvalues of S1 S2 are all unchanged by Q^T . Q. It
    is much faster (eigen-decompositions of r x r instead of 2048 x 2048 matrices: tens of seconds on a
    busy CPU) and more accurate (no square roots of round-off eigenvalues in the 2048 - r null space).
    """
    (mu1, s1), (mu2, s2) = fake.statistics(), real.statistics()
    if fake.rows is None or real.rows is None:
        return metrics.frechet_distance(mu1, s1, mu2, s2)
    basis = np.concatenate([np.concatenate(fake.rows) - mu1, np.concatenate(real.rows) - mu2,
                            (mu1 - mu2)[None]]).T
    q, _ = np.linalg.qr(basis)  # (D, r), orthonormal columns spanning (a superset of) that span
    return metrics.frechet_distance(q.T @ mu1, q.T @ s1 @ q, q.T @ mu2, q.T @ s2 @ q)


def fid_from_features(fake: np.ndarray, real: np.ndarray) -> float:
    """FID of two in-memory feature sets (N, 2048), exact at any N (see ``_fid``)."""
    keep = (metrics.FIDInceptionV3.FEATURE_DIM - 2) // 2
    moments = _Moments(keep), _Moments(keep)
    for m, rows in zip(moments, (fake, real)):
        m.add(rows)
    return float(_fid(*moments))


def _cpu_module(generator: torch.nn.Module) -> torch.nn.Module:
    """The generator as a plain CPU module that pickles (torch.compile wrapper removed; a copy if it
    has to move, so the caller's model stays where it is)."""
    generator = getattr(generator, "_orig_mod", generator)
    tensors = list(generator.parameters()) + list(generator.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return generator
    return copy.deepcopy(generator).to("cpu")


def evaluate_generator(generator: torch.nn.Module, data: ShardData, *, input_column: str = "sketch",
                       target_column: str = "color", split: str | None = None, fid_weights: str | None = None,
                       max_images: int | None = None, batch_size: int = 16, use_gpu: bool | None = None,
                       concurrency: int | tuple[int, int] | None = None) -> dict:
    """SSIM (mean, std) and FID of ``generator`` on ``split`` (default: the held-out one) of a data set,
    computed with Ray Data.

    ``fid_weights``: as ``metrics.load_fid_inception`` (None: auto; "random": a labelled random init
    for tests). ``use_gpu`` None: one GPU per actor when the cluster has GPUs. ``concurrency``: the
    actor pool (default: 1 on CPU; 1..#GPUs on GPU). Returns ``{"ssim", "ssim_std", "fid",
    "num_images", "fid_backbone", "split", "samples"}`` (+ ``"fid_warning"`` for a random-init
    backbone); ``samples`` holds at most 8 ``[input, output, target]`` uint8 images.
    """
    for name, column in (("input_column", input_column), ("target_column", target_column)):
        if column not in data.columns:
            raise ValueError(f"{name}={column!r}: a {data.kind} data set has columns {list(data.columns)}")
    if max_images is not None and max_images < 2:
        raise ValueError(f"max_images must be at least 2 (FID needs two images per set), got {max_images}")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus > 0
    elif use_gpu and not gpus:
        raise ValueError("use_gpu=True but the Ray cluster has no GPUs (the evaluation actor would never start)")
    if concurrency is None:
        concurrency = (1, gpus) if use_gpu and gpus > 1 else 1
    pool = (ray.data.ActorPoolStrategy(size=concurrency) if isinstance(concurrency, int)
            else ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1]))

    split = data.held_out_split(split)
    ds = data.dataset(split, train=False)
    if max_images is not None:
        ds = ds.limit(max_images)
    generator_ref = ray.put(_cpu_module(generator))
    ds = ds.map_batches(
        _EvalUDF, batch_size=batch_size, batch_format="numpy", compute=pool,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs=dict(generator=[generator_ref], fid_weights=fid_weights, use_gpu=bool(use_gpu),
                                   input_column=input_column, target_column=target_column),
    )

    # Keep the features themselves while n1 + n2 - 1 < D (the exact low-rank path in _fid).
    keep = (metrics.FIDInceptionV3.FEATURE_DIM - 2) // 2
    fake, real = _Moments(keep), _Moments(keep)
    scores: list[np.ndarray] = []
    ids: list[str] = []
    samples: list[list[np.ndarray]] = []
    backbones: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids.extend(str(i) for i in batch["id"])
        scores.append(np.asarray(batch["ssim"], np.float64))
        fake.add(batch["feat_fake"])
        real.add(batch["feat_real"])
        backbones.update(b for b in batch["backbone"] if b)
        for png in batch["sample"]:
            if png and len(samples) < MAX_SAMPLES:
                triplet = images.decode_rgb(png)
                samples.append([np.ascontiguousarray(t) for t in np.split(triplet, 3, axis=1)])

    n = len(ids)
    if len(set(ids)) != n:
        raise RuntimeError(f"evaluation saw {n - len(set(ids))} duplicated rows: the pipeline repeated data")
    if n < 2:
        raise ValueError(f"{data.uri} split {split!r}: {n} image(s) to evaluate; FID needs at least 2")
    if len(backbones) != 1:
        raise RuntimeError(f"the evaluation actors loaded different Inception weights: {sorted(backbones)}")
    backbone = json.loads(backbones.pop())
    metrics.warn_if_few_samples(n, "generated and the target sets")

    ssim_values = np.concatenate(scores)
    fid = _fid(fake, real)
    result: dict[str, Any] = {
        "ssim": float(ssim_values.mean()),
        "ssim_std": float(ssim_values.std()),
        "fid": float(fid),
        "num_images": n,
        "fid_backbone": backbone,
        "split": split,
        "samples": samples,
    }
    if backbone.get("random_init"):
        result["fid_warning"] = RANDOM_INIT_WARNING
        warnings.warn(f"{RANDOM_INIT_WARNING} (Inception weights: {backbone.get('name')})", UserWarning,
                      stacklevel=2)
    return result


def _fid_cell(result: dict) -> str:
    fid = result["fid"]
    if result.get("fid_backbone", {}).get("random_init"):
        return f"{fid:.4g} (random-init Inception: not comparable)"
    return f"{fid:.1f}"


def write_report(result: dict, out_uri: str, model_name: str, extra: dict | None = None,
                 options: storage.StoreOptions | None = None) -> dict:
    """Writes ``metrics.json``, ``results.md`` (the GANime study's ``| model | FID | SSIM |`` table, one
    row) and ``samples.png`` (input | output | target per line) under ``out_uri``; returns their URIs."""
    uris = {"metrics": storage.join(out_uri, "metrics.json"), "markdown": storage.join(out_uri, "results.md"),
            "samples": storage.join(out_uri, "samples.png")}
    record = {"model": model_name, **{k: v for k, v in result.items() if k != "samples"}, **(extra or {}),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    storage.write_json(uris["metrics"], record, options)

    backbone = result.get("fid_backbone", {})
    lines = ["| model | FID | SSIM |", "|---|---|---|",
             f"| {model_name} | {_fid_cell(result)} | {result['ssim']:.3f} |", "",
             f"{result['num_images']} images of the {result.get('split', '?')!r} split; SSIM std "
             f"{result['ssim_std']:.3f}; FID Inception weights: {backbone.get('name')}"
             + (f" (sha256 {backbone['sha256'][:12]})" if backbone.get("sha256") else "") + "."]
    if result["num_images"] < metrics.RECOMMENDED_MIN_SAMPLES:
        lines.append(f"FID from fewer than {metrics.RECOMMENDED_MIN_SAMPLES} images: unstable, biased upwards.")
    if result.get("fid_warning"):
        lines.append(f"**{result['fid_warning']}**")
    storage.write_bytes(uris["markdown"], ("\n".join(lines) + "\n").encode(), options)

    rows = [list(s) for s in result.get("samples") or []] or [[np.full((8, 8, 3), 255, np.uint8)] * 3]
    sheet = preview.sample_sheet(rows)
    storage.write_bytes(uris["samples"], images.encode_png(sheet), options)
    return uris


def evaluate_checkpoint(model_uri: str, cfg, data_uri: str | None = None,
                        out_uri: str | None = None) -> tuple[dict, dict]:
    """FID / SSIM of a checkpoint's generator on ``cfg.eval.split``, with the model's own preprocessing,
    on its own data set unless ``data_uri`` is given; the report goes to ``out_uri`` (default: beside the
    checkpoint, ``<checkpoint>_eval``). Returns (result, the report's URIs)."""
    from ray_ganime.config import Config
    from ray_ganime.runtime import init_ray

    options = cfg.store.options()
    # The checkpoint and the data set first: a bad checkpoint or an unreachable store fails before Ray starts.
    generator, meta = checkpoints.load_generator(model_uri, options=options)
    trained = Config.model_validate(meta["config"])
    data = ShardData(data_uri or trained.dataset_uri(), trained.data, options)
    init_ray()
    result = evaluate_generator(generator, data, split=cfg.eval.split, fid_weights=cfg.eval.fid_weights,
                                max_images=cfg.eval.max_images, batch_size=cfg.eval.batch_size)
    name = f"{meta['recipe']}" + (" + TV" if meta["config"].get("loss", {}).get("tv") else "")
    files = write_report(result, out_uri or model_uri.rstrip("/") + "_eval", name,
                         extra={"checkpoint": model_uri, "epoch": meta["epoch"]}, options=options)
    return {**result, "model": name}, files
