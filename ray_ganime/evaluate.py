"""Held-out evaluation of a generator, one direction of a recipe at a time: FID (and SSIM where the data pairs
input and target) over a split, a report, a sample sheet.

A direction (``recipe.directions()``) names a source and a target by batch name (``data.locate``): the paired
``sketch`` -> ``color`` of Pix2Pix, or the unpaired domains ``A`` -> ``B`` of CycleGAN (with a view suffix,
``A_lineart``, when the recipe trains on one: the decode stage emits it as column ``image_lineart``).

Where each stage runs:

- Ray Data tasks: read + decode + resize to ``crop_size`` (``ShardData.dataset(split, train=False)``).
- One Ray Data actor per GPU (one on a CPU-only cluster), a callable class that holds the generator
  and the FID Inception network, each loaded once: generated = G(input) in eval mode, Inception pool-3
  features of the generated images, and for a paired direction per-image SSIM against the target on
  uint8 (tf.image.ssim) and the target's features in the same pass. Rows leave the actor as ``id``,
  ``ssim``, ``feat_fake``/``feat_real`` (2048 float32) -- never the images, except a few PNG-encoded
  (input | output [| target]) rows for the sample sheet. An unpaired direction streams the source domain's
  split and the target domain's as one dataset (a union, rows tagged ``fake``/``real``) through the same
  actors, which give the source rows' ``feat_fake`` and the target rows' ``feat_real``: one actor pool to
  start, not one per domain.
  (On a CPU-only cluster Ray Data fuses the decode stage into this actor; with a GPU it stays apart.)
- The driver: streams those rows and accumulates SSIM and the feature moments in float64 (memory does
  not grow with the split: two 2048x2048 sums, plus the features themselves while there are fewer than
  1024 images), then FID = Fréchet distance of the two Gaussians.

Both FID sets are quantised the same way: the generated image goes through uint8 (as a saved PNG
would) before Inception, which sees ``uint8 / 255``. Inception runs in float32 even on CUDA (no bf16
autocast, no TF32: either would move the FID); only the generator uses bf16 autocast there. Both
nets run channels_last on CUDA.

Reports (``write_reports``): a recipe with one generator writes ``metrics.json``, ``results.md`` and
``samples.png`` into the report folder; one with several writes ``<direction>/metrics.json`` and
``<direction>/samples.png`` per direction and one ``results.md`` with a row per direction.
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
from ray_ganime.recipes import Direction

__all__ = ["evaluate_generator", "evaluate_checkpoint", "write_report", "write_reports", "summary_lines",
           "RANDOM_INIT_WARNING", "MAX_SAMPLES"]

RANDOM_INIT_WARNING = "RANDOM-INIT INCEPTION: not a real FID"
MAX_SAMPLES = 8  # (input, output[, target]) rows kept for samples.png


class _Tag:
    """An unpaired direction's rows as its actors take them: ``column`` as ``pixels``, tagged with ``role``
    (fake: a source image to translate; real: a target-domain image), the same schema for both domains."""

    def __init__(self, column: str, role: str) -> None:
        self.column, self.role = column, role

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "pixels": batch[self.column], "role": np.full(len(batch["id"]), self.role)}


class _EvalUDF:
    """The Ray Data actor: generator + Inception loaded once; per batch the generated images' features, and the
    target's features and SSIM when ``target_column`` pairs a target with each input. Batches of ``_Tag``ged
    rows (an unpaired direction): ``feat_fake`` of the fake rows, ``feat_real`` of the real ones, NaN where a
    row has none."""

    def __init__(self, generator: Any, fid_weights: str | None, use_gpu: bool, input_column: str,
                 target_column: str | None = None, num_samples: int = MAX_SAMPLES) -> None:
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
        return metrics.inception_features(self.inception, pixels, self.device).astype(np.float32)

    def _generate(self, inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = transforms.to_tensor(inputs, channels_last_memory=self.device.type == "cuda").to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                y = self.generator(x)
            return transforms.to_uint8(y.float())

    def _samples(self, *columns: np.ndarray) -> np.ndarray:
        """A few rows for the sample sheet, PNG-encoded side by side (lossless, small); b"" elsewhere."""
        n = len(columns[0])
        sample = np.full(n, b"", dtype=object)
        for i in range(min(n, self.samples_left)):
            sample[i] = images.encode_png(np.concatenate([c[i] for c in columns], axis=1))
        self.samples_left -= min(n, self.samples_left)
        return sample

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = batch[self.input_column]
        n = len(batch["id"])
        # Which Inception weights this actor really loaded, once per actor (the driver checks they agree).
        backbone = np.full(n, "", dtype=object)
        if n and not self.reported:
            backbone[0], self.reported = self.backbone, True
        out = {"id": np.asarray(batch["id"], dtype=object), "backbone": backbone}
        if "role" in batch:
            return {**out, **self._unpaired(inputs, batch["role"] == "fake")}
        fake = self._generate(inputs)
        out["feat_fake"] = self._features(fake)
        targets = batch[self.target_column]
        if fake.shape != targets.shape:
            raise ValueError(f"generator output {fake.shape} does not match the target batch {targets.shape}")
        out["feat_real"] = self._features(targets)
        out["ssim"] = np.asarray(metrics.ssim(fake, targets), np.float64).reshape(n)
        return {**out, "sample": self._samples(inputs, fake, targets)}

    def _unpaired(self, pixels: np.ndarray, is_fake: np.ndarray) -> dict[str, np.ndarray]:
        n, dim = len(pixels), metrics.FIDInceptionV3.FEATURE_DIM
        out = {"feat_fake": np.full((n, dim), np.nan, np.float32), "feat_real": np.full((n, dim), np.nan, np.float32),
               "sample": np.full(n, b"", dtype=object)}
        if is_fake.any():
            inputs = pixels[is_fake]
            fake = self._generate(inputs)
            out["feat_fake"][is_fake] = self._features(fake)
            out["sample"][is_fake] = self._samples(inputs, fake)
        if not is_fake.all():
            out["feat_real"][~is_fake] = self._features(pixels[~is_fake])
        return out


def _cpu_module(generator: torch.nn.Module) -> torch.nn.Module:
    """The generator as a plain CPU module that pickles (torch.compile wrapper removed; a copy if it
    has to move, so the caller's model stays where it is)."""
    generator = getattr(generator, "_orig_mod", generator)
    tensors = list(generator.parameters()) + list(generator.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return generator
    return copy.deepcopy(generator).to("cpu")


class _Totals:
    """What the driver accumulates from the actors' rows: feature moments (float64), SSIM values, ids per
    side (to catch repeated rows), sample rows, and the Inception weights every actor reported."""

    def __init__(self, tiles: int) -> None:
        self.fake, self.real = metrics.moments_pair(metrics.FIDInceptionV3.FEATURE_DIM)
        self.ids: dict[str, list[str]] = {"feat_fake": [], "feat_real": []}
        self.scores: list[np.ndarray] = []
        self.samples: list[list[np.ndarray]] = []
        self.backbones: set[str] = set()
        self.tiles = tiles  # images per sample row: input | output [| target]

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for key, moments in (("feat_fake", self.fake), ("feat_real", self.real)):
            if key in batch:
                rows = ~np.isnan(batch[key][:, 0])  # an unpaired batch: each row is one side's
                moments.add(batch[key][rows])
                self.ids[key].extend(str(i) for i in batch["id"][rows])
        if "ssim" in batch:
            self.scores.append(np.asarray(batch["ssim"], np.float64))
        self.backbones.update(b for b in batch["backbone"] if b)
        for png in batch.get("sample", ()):
            if png and len(self.samples) < MAX_SAMPLES:
                row = images.decode_rgb(png)
                self.samples.append([np.ascontiguousarray(t) for t in np.split(row, self.tiles, axis=1)])

    def count(self, key: str, what: str) -> int:
        ids = self.ids[key]
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"evaluation saw {len(ids) - len(set(ids))} duplicated rows: the pipeline repeated data")
        if len(ids) < 2:
            raise ValueError(f"{what}: {len(ids)} image(s) to evaluate; FID needs at least 2")
        return len(ids)

    def backbone(self) -> dict:
        if len(self.backbones) != 1:
            raise RuntimeError(f"the evaluation actors loaded different Inception weights: {sorted(self.backbones)}")
        return json.loads(next(iter(self.backbones)))


def _actors(use_gpu: bool | None, concurrency: int | tuple[int, int] | None) -> tuple[bool, Any]:
    """(whether each evaluation actor takes a GPU, the actor pool size or (min, max))."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus > 0
    elif use_gpu and not gpus:
        raise ValueError("use_gpu=True but the Ray cluster has no GPUs (the evaluation actor would never start)")
    if concurrency is None:
        concurrency = (1, gpus) if use_gpu and gpus > 1 else 1
    return bool(use_gpu), concurrency


def evaluate_generator(generator: torch.nn.Module, data: ShardData, direction: Direction, *,
                       split: str | None = None, fid_weights: str | None = None, max_images: int | None = None,
                       batch_size: int = 16, use_gpu: bool | None = None,
                       concurrency: int | tuple[int, int] | None = None) -> dict:
    """FID (and, where ``direction.paired``, SSIM mean and std) of ``generator`` on ``split`` (default: the
    held-out one) of a data set, for one ``direction`` of a recipe, computed with Ray Data.

    Paired: one pass over the split; FID of G(source) against the paired targets. Unpaired: G(source) over
    the source domain's split, against the real images of the target domain's split (at most ``max_images``
    of each). ``fid_weights``: as ``metrics.load_fid_inception`` (None: auto; "random": a labelled random init
    for tests). ``use_gpu`` None: one GPU per actor when the cluster has GPUs. ``concurrency``: the actor
    pool (default: 1 on CPU; 1..#GPUs on GPU).

    Returns ``{"fid", "num_images", "fid_backbone", "split", "samples"}`` (+ ``"fid_warning"`` for a random-init
    backbone); paired also ``"ssim", "ssim_std"`` and ``samples`` as ``[input, output, target]``; unpaired also
    ``"num_real", "source", "target"`` and ``samples`` as ``[input, output]`` (at most 8, uint8).
    """
    source_domain, input_column = data.locate(direction.source)
    target_domain, target_column = data.locate(direction.target)
    if direction.paired and source_domain != target_domain:
        raise ValueError(f"{direction.source!r} -> {direction.target!r} is paired, but they are different "
                         f"domains of a {data.kind} data set")
    if max_images is not None and max_images < 2:
        raise ValueError(f"max_images must be at least 2 (FID needs two images per set), got {max_images}")
    use_gpu, concurrency = _actors(use_gpu, concurrency)
    split = data.held_out_split(split)

    def rows(domain: str | None) -> ray.data.Dataset:
        ds = data.dataset(split, train=False, domain=domain)
        return ds if max_images is None else ds.limit(max_images)

    if direction.paired:
        ds, udf = rows(source_domain), {"input_column": input_column, "target_column": target_column}
    else:
        ds = rows(source_domain).map_batches(_Tag(input_column, "fake"), batch_format="numpy",
                                             num_cpus=data.cfg.task_cpus)
        ds = ds.union(rows(target_domain).map_batches(_Tag(target_column, "real"), batch_format="numpy",
                                                      num_cpus=data.cfg.task_cpus))
        udf = {"input_column": "pixels"}
    pool = (ray.data.ActorPoolStrategy(size=concurrency) if isinstance(concurrency, int)
            else ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1]))
    ds = ds.map_batches(_EvalUDF, batch_size=batch_size, batch_format="numpy", compute=pool,
                        num_gpus=1 if use_gpu else 0,
                        fn_constructor_kwargs=dict(generator=[ray.put(_cpu_module(generator))],
                                                   fid_weights=fid_weights, use_gpu=use_gpu, **udf))
    totals = _Totals(tiles=3 if direction.paired else 2)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        totals.add(batch)

    where = f"{data.uri} split {split!r}"
    n = totals.count("feat_fake", f"{where} ({direction.source})")
    result: dict[str, Any] = {}
    if direction.paired:
        ssim = np.concatenate(totals.scores)
        result.update(ssim=float(ssim.mean()), ssim_std=float(ssim.std()))
        metrics.warn_if_few_samples(n, "generated and the target sets")
    else:
        n_real = totals.count("feat_real", f"{where} ({direction.target})")
        result.update(num_real=n_real, source=direction.source, target=direction.target)
        metrics.warn_if_few_samples(min(n, n_real), "generated or the target set")
    backbone = totals.backbone()
    result.update(fid=float(metrics.fid_of_moments(totals.fake, totals.real)), num_images=n,
                  fid_backbone=backbone, split=split, samples=totals.samples)
    if backbone.get("random_init"):
        result["fid_warning"] = RANDOM_INIT_WARNING
        warnings.warn(f"{RANDOM_INIT_WARNING} (Inception weights: {backbone.get('name')})", UserWarning,
                      stacklevel=2)
    return result


# ------------------------------------------------------------------------------------------------ reports


def _fid_cell(result: dict) -> str:
    fid = result["fid"]
    if result.get("fid_backbone", {}).get("random_init"):
        return f"{fid:.4g} (random-init Inception: not comparable)"
    return f"{fid:.1f}"


def _row(name: str, result: dict) -> str:
    """The GANime study's ``| model | FID | SSIM |`` row (SSIM "-" where the data has no pairs)."""
    ssim = f"{result['ssim']:.3f}" if "ssim" in result else "-"
    return f"| {name} | {_fid_cell(result)} | {ssim} |"


def _notes(result: dict, prefix: str = "") -> list[str]:
    """What a table row was computed from: image counts, the split, the Inception weights."""
    backbone = result.get("fid_backbone", {})
    split = result.get("split", "?")
    if "ssim" in result:
        counts = f"{result['num_images']} images of the {split!r} split; SSIM std {result['ssim_std']:.3f}"
    else:
        counts = (f"{result['num_images']} images generated from {result.get('source')!r} against "
                  f"{result['num_real']} real {result.get('target')!r} images of the {split!r} split")
    lines = [f"{prefix}{counts}; FID Inception weights: {backbone.get('name')}"
             + (f" (sha256 {backbone['sha256'][:12]})" if backbone.get("sha256") else "") + "."]
    if min(result["num_images"], result.get("num_real", result["num_images"])) < metrics.RECOMMENDED_MIN_SAMPLES:
        lines.append(f"FID from fewer than {metrics.RECOMMENDED_MIN_SAMPLES} images: unstable, biased upwards.")
    if result.get("fid_warning"):
        lines.append(f"**{result['fid_warning']}**")
    for net, ident in (result.get("pretrained") or {}).items():  # the frozen networks of the training losses
        lines.append(f"Trained with {net} weights {ident['name']}"
                     + (f" (sha256 {ident['sha256'][:12]})" if ident.get("sha256") else "") + ".")
        if ident.get("random_init"):
            lines.append(f"**Its {net} was randomly initialised: the perceptual losses it trained with used random "
                         f"features, not those of the published recipe.**")
    return lines


def _write_record(uri: str, result: dict, model_name: str, extra: dict | None,
                  options: storage.StoreOptions | None) -> None:
    record = {"model": model_name, **{k: v for k, v in result.items() if k != "samples"}, **(extra or {}),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    storage.write_json(uri, record, options)


def _write_samples(uri: str, result: dict, options: storage.StoreOptions | None) -> None:
    tiles = 3 if "ssim" in result else 2
    rows = [list(s) for s in result.get("samples") or []] or [[np.full((8, 8, 3), 255, np.uint8)] * tiles]
    storage.write_bytes(uri, images.encode_png(preview.sample_sheet(rows)), options)


def write_report(result: dict, out_uri: str, model_name: str, extra: dict | None = None,
                 options: storage.StoreOptions | None = None) -> dict:
    """Writes ``metrics.json``, ``results.md`` (the GANime study's ``| model | FID | SSIM |`` table, one
    row) and ``samples.png`` (input | output [| target] per line) under ``out_uri``; returns their URIs."""
    uris = {"metrics": storage.join(out_uri, "metrics.json"), "markdown": storage.join(out_uri, "results.md"),
            "samples": storage.join(out_uri, "samples.png")}
    _write_record(uris["metrics"], result, model_name, extra, options)
    lines = ["| model | FID | SSIM |", "|---|---|---|", _row(model_name, result), "", *_notes(result)]
    storage.write_bytes(uris["markdown"], ("\n".join(lines) + "\n").encode(), options)
    _write_samples(uris["samples"], result, options)
    return uris


def write_reports(results: dict[str, dict], out_uri: str, extra: dict | None = None,
                  options: storage.StoreOptions | None = None) -> dict[str, dict]:
    """The report of every direction of a recipe (``results``: direction -> ``evaluate_generator``'s result
    with a ``"model"`` name). One direction (""): ``write_report``. Several: ``<out>/<direction>/metrics.json``
    (recording the direction) and ``samples.png`` each, and one ``<out>/results.md`` with a row per direction.
    Returns {direction: {"metrics", "markdown", "samples"}} (the markdown shared)."""
    if list(results) == [""]:
        return {"": write_report(results[""], out_uri, results[""]["model"], extra, options)}
    markdown = storage.join(out_uri, "results.md")
    files, rows, notes = {}, [], []
    for direction, result in results.items():
        folder = storage.join(out_uri, direction)
        files[direction] = {"metrics": storage.join(folder, "metrics.json"), "markdown": markdown,
                            "samples": storage.join(folder, "samples.png")}
        _write_record(files[direction]["metrics"], result, result["model"], {**(extra or {}), "direction": direction},
                      options)
        _write_samples(files[direction]["samples"], result, options)
        rows.append(_row(result["model"], result))
        notes.append(_notes(result, prefix=f"{result['model']}: "))
    # Each direction's counts, then the caveats once (they are the same for every direction).
    caveats = dict.fromkeys(line for note in notes for line in note[1:])
    lines = ["| model | FID | SSIM |", "|---|---|---|", *rows, "", *(n[0] for n in notes), *caveats]
    storage.write_bytes(markdown, ("\n".join(lines) + "\n").encode(), options)
    return files


def summary_lines(results: dict[str, dict], files: dict[str, dict]) -> list[str]:
    """What the CLI prints of an evaluation: one line per direction, warnings, and where the report went."""
    lines = []
    for result in results.values():
        ssim = f"  SSIM {result['ssim']:.4f}" if "ssim" in result else ""
        count = f"{result['num_images']} images" if "num_real" not in result else \
            f"{result['num_images']} generated vs {result['num_real']} real images"
        lines.append(f"{result['model']}: FID {result['fid']:.1f}{ssim}  ({count}, "
                     f"Inception weights: {result['fid_backbone']['name']})")
        if result.get("fid_warning"):
            lines.append(f"WARNING: {result['fid_warning']}")
    printed = set()
    for direction, uris in files.items():
        for kind, uri in uris.items():
            if uri not in printed:
                printed.add(uri)
                label = f"{direction} {kind}" if direction and kind != "markdown" else kind
                lines.append(f"{label + ':':<13} {uri}" if len(files) > 1 else f"{label + ':':<9} {uri}")
    return lines


def evaluate_checkpoint(model_uri: str, cfg, data_uri: str | None = None,
                        out_uri: str | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """FID (and SSIM where paired) of every generator of a checkpoint's recipe (``recipe.directions()``) on
    ``cfg.eval.split``, with the model's own preprocessing, on its own data set unless ``data_uri`` is given;
    the report goes to ``out_uri`` (default: beside the checkpoint, ``<checkpoint>_eval``; ``write_reports``).
    Returns ({direction: result with its "model" name}, {direction: the report's URIs}); "" is a recipe's sole
    direction."""
    from ray_ganime.runtime import init_ray

    options = cfg.store.options()
    # The checkpoint and the data set first: a bad checkpoint or an unreachable store fails before Ray starts.
    state, meta = checkpoints.load(model_uri, options)
    recipe = checkpoints.recipe_of(state)
    data = ShardData(data_uri or recipe.cfg.dataset_uri(), recipe.cfg.data, options)
    init_ray()
    results = {}
    for direction, d in recipe.directions().items():
        result = evaluate_generator(recipe.generator(direction).eval(), data, d, split=cfg.eval.split,
                                    fid_weights=cfg.eval.fid_weights, max_images=cfg.eval.max_images,
                                    batch_size=cfg.eval.batch_size)
        name = recipe.display_name() + (f" {direction}" if direction else "")
        pretrained = {"pretrained": meta["pretrained"]} if meta.get("pretrained") else {}
        results[direction] = {**result, "model": name, **pretrained}
    files = write_reports(results, out_uri or model_uri.rstrip("/") + "_eval",
                          extra={"checkpoint": model_uri, "epoch": meta["epoch"]}, options=options)
    return results, files
