"""The training engine: any registered recipe on Ray Train (DDP over N workers, CPU or GPU), or in this process
(``train.num_workers: 0``: the same loop without Ray Train, no worker actors to start; a debugger sees it).

Per run, under <store>/runs/<run_name>/:
    checkpoint_epoch_NNNN/   Ray Train checkpoints (ray_ganime.checkpoints: state.pt, and meta.json with
                             its size and sha256); a checkpoint is registered only once uploaded
    samples/epoch_NNNN.png   input | output | target grids of fixed test examples
    tensorboard/         TensorBoard scalars (every loss term, images/s, epoch time, LR)
    metrics.jsonl        one JSON line per epoch
    config.yaml          the full config the run was started with

Re-running with the same run name continues at the next epoch with the same LR schedule and RNG
state, from the newest checkpoint that passes its check (newer ones that fail are skipped with a warning);
``train.resume_from`` starts a new run from any checkpoint folder instead.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml

from ray_ganime import checkpoints, images, lease, preview, progress, shards, storage, transforms, watchdog
from ray_ganime.config import Config, ConfigError
from ray_ganime.data import Pixels, ShardData
from ray_ganime.recipes import recipe_class

# Ray Train V2's record of a run's registered checkpoints, in the run folder: get_checkpoint() offers its newest.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


# ------------------------------------------------------------------------------------ run locations


def run_name(cfg: Config) -> str:
    """A fresh name unless one is given: a stale run folder with the same name would silently resume."""
    if cfg.train.run_name:
        return cfg.train.run_name
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return f"{cfg.recipe}-{stamp}"


def default_run_uri(cfg: Config, name: str) -> str:
    return storage.join(cfg.store.uri, "runs", name)


# ------------------------------------------------------------------------------------ checkpoints


def rng_state() -> dict:
    """Torch's generators (dropout, noise); data randomness is keyed by (seed, epoch) and needs none."""
    return {"torch": torch.get_rng_state(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, recipe, cfg: Config, epoch: int, global_step: int, metrics: dict,
                    ranks: list[dict] | None = None) -> None:
    """``ranks``: every rank's own state (``rank_state``), rank 0's first; None: this process's alone."""
    ranks = ranks or [rank_state(recipe)]
    checkpoints.write(folder, {"recipe": recipe.state_dict(), "epoch": epoch, "global_step": global_step,
                               "rng": ranks[0]["rng"], "ranks": ranks, "config": cfg.model_dump(mode="json")},
                      {"recipe": cfg.recipe, "epoch": epoch, "global_step": global_step, "metrics": metrics,
                       "config": cfg.model_dump(mode="json"),
                       **({"pretrained": recipe.pretrained} if recipe.pretrained else {})})


def rank_state(recipe) -> dict:
    """What exact resume needs from one rank besides the shared weights: its RNG (dropout masks, noise) and
    the recipe's per-rank state (image pools)."""
    return {"rng": rng_state(), "recipe": recipe.rank_state()}


def restore_rank_state(state: dict, recipe, rank: int, world: int) -> None:
    """Rank ``rank``'s share of a checkpoint. A rank the checkpoint has no state for (checkpoints from before
    per-rank state carry rank 0's RNG only; a run with more workers) keeps its fresh seed and state."""
    ranks = state.get("ranks") or [{"rng": state["rng"], "recipe": {}}]
    if "ranks" in state and len(ranks) != world and rank == 0:
        warnings.warn(f"the checkpoint was written by {len(ranks)} worker(s), this run has {world}: "
                      f"ranks restore their own RNG and recipe state where the checkpoint has it; "
                      f"not an exact resume", UserWarning, stacklevel=2)
    if rank < len(ranks):
        set_rng_state(ranks[rank]["rng"])
        recipe.load_rank_state(ranks[rank]["recipe"])


def gather_rank_states(recipe, world: int) -> list[dict] | None:
    """Every rank's ``rank_state`` on rank 0 (None on the others); one rank: its own."""
    mine = rank_state(recipe)
    if world == 1:
        return [mine]
    rank = torch.distributed.get_rank()
    gathered = [None] * world if rank == 0 else None
    torch.distributed.gather_object(mine, gathered, dst=0)
    return gathered


def resume_point(run_uri: str, resume_from: str | None, options: storage.StoreOptions | None) -> dict | None:
    """Where a fit starts ({"uri", "epoch"}; None: at epoch 1): the run's newest checkpoint that passes its
    check, else ``resume_from``. Newer ones that fail are skipped with a warning naming each, and dropped
    from Ray Train's record of the run. A run with checkpoints but none usable: CheckpointError."""
    newest = checkpoints.newest_valid(run_uri, options)
    for error in newest.skipped:
        warnings.warn(f"skipping checkpoint {error}; resuming from {newest.uri}", UserWarning, stacklevel=2)
    _forget_in_ray(run_uri, {e.uri for e in newest.skipped}, options)
    if newest.uri:
        return {"uri": newest.uri, "epoch": newest.meta["epoch"]}
    if resume_from:
        return {"uri": storage.join(resume_from), "epoch": checkpoints.verify(resume_from, options)["epoch"]}
    return None


def _forget_in_ray(run_uri: str, skipped: set[str], options: storage.StoreOptions | None) -> None:
    """Drop the skipped checkpoints, and any whose folder is gone, from Ray Train's record of the run. Else
    get_checkpoint() would offer a skipped one, Ray would refuse to start over a missing one, and an epoch
    trained again into a skipped one's folder would be registered twice (keep_checkpoints, deleting the
    older entry, would then delete the new checkpoint)."""
    path = storage.join(run_uri, RAY_SNAPSHOT)
    if not storage.exists(path, options):
        return
    usable = {_name(u) for u in checkpoints.run_checkpoints(run_uri, options)} - {_name(u) for u in skipped}
    snapshot = storage.read_json(path, options)
    results = snapshot["checkpoint_results"]
    keep = [i for i, r in enumerate(results) if r["checkpoint_dir_name"] in usable]
    if len(keep) < len(results):
        # In registration order (there is no checkpoint_score_attribute), so the last kept is the latest. No
        # pending validations to drop: ray-ganime reports none.
        snapshot["checkpoint_results"] = [results[i] for i in keep]
        snapshot["checkpoint_report_indices"] = [snapshot["checkpoint_report_indices"][i] for i in keep]
        snapshot["latest_checkpoint_result"] = snapshot["checkpoint_results"][-1] if keep else None
        storage.write_json(path, snapshot, options)


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------ the worker loop


def _fixed_sample_batch(data: ShardData, recipe, n: int = 8) -> dict[str, torch.Tensor]:
    """The same few held-out examples every epoch, for the sample grids."""
    split = shards.held_out_split(data.manifest) or "train"
    return {k: transforms.to_tensor(v) for k, v in data.decoded(split, recipe.batch_names(), n).items()}


class Validator:
    """Rank 0's score of the recipe's generators on a fixed validation subset after every epoch: the numbers a
    sweep ranks trials by. Per direction (suffix ``_a2b`` where a recipe has several): ``val_ssim``
    (tf.image.ssim on uint8) and ``val_l1`` (mean |G(x) - y| in [-1, 1], as the L1 loss) where the data pairs
    input and target; ``val_fid`` (FID Inception pool-3 of the subset against real target-side images, the
    real side computed once) when ``eval.val_fid``; with several directions also their means, and the
    recipe's own (``validation_extras``). Eval mode and no random draws: the run's RNG stream, hence an exact
    resume, is untouched."""

    def __init__(self, data: ShardData, cfg: Config, recipe, device: torch.device):
        self.split = "val" if data.count("val") else data.held_out_split(cfg.eval.split)
        self.directions = recipe.directions()
        self.images = data.decoded(self.split, recipe.direction_names(), cfg.eval.val_images)
        for name, pixels in self.images.items():
            if len(pixels) < 2:
                raise ValueError(f"{data.uri}: {len(pixels)} validation example(s) of {name!r} in split "
                                 f"{self.split!r}; need at least 2 (or set eval.val_images=0)")
        self.recipe, self.device, self.batch_size = recipe, device, cfg.eval.batch_size
        self.inception, self.real_features = None, {}
        if cfg.eval.val_fid:
            from ray_ganime import metrics

            self.inception, self.backbone = metrics.load_fid_inception(cfg.eval.fid_weights, device)
            for d in self.directions.values():
                self.real_features[d.target] = metrics.inception_features(self.inception, self.images[d.target],
                                                                           device)
        # What returning the input unchanged scores on the same subset, reported with every epoch: a model's
        # val_ssim means little without it (on line art, SSIM rewards copying).
        self.baseline = {f"baseline_copy_val_{metric}{f'_{key}' if key else ''}": value
                         for key, d in self.directions.items()
                         if self.images[d.source].shape[1:] == self.images[d.target].shape[1:]
                         for metric, value in self._scores(d, transforms.to_tensor(self.images[d.source])).items()}

    def _scores(self, d, output: torch.Tensor) -> dict:
        """``ssim`` and ``l1`` (paired directions) and ``fid`` (with eval.val_fid) of ``output`` (float in
        [-1, 1]) against ``d``'s target images."""
        from ray_ganime import metrics

        out, pixels = {}, transforms.to_uint8(output)
        if d.paired:
            target = transforms.to_tensor(self.images[d.target]).to(output.device)
            out["ssim"] = float(np.mean(metrics.ssim(pixels, self.images[d.target])))
            out["l1"] = (output - target).abs().mean(dim=(1, 2, 3)).mean().item()
        if self.inception is not None:
            features = metrics.inception_features(self.inception, pixels, self.device)
            out["fid"] = metrics.fid_from_features(features, self.real_features[d.target], warn=False)
        return out

    @torch.no_grad()
    def __call__(self) -> dict:
        out: dict = {}
        inputs, fakes = {}, {}
        for key, d in self.directions.items():
            x = transforms.to_tensor(self.images[d.source]).to(self.device)
            inputs[key], fakes[key] = x, self.recipe.run_generator(d.net, x, self.batch_size)
            out.update({f"val_{metric}{f'_{key}' if key else ''}": value
                        for metric, value in self._scores(d, fakes[key]).items()})
        if len(self.directions) > 1:  # one number for a sweep over all of them
            for metric in ("val_ssim", "val_l1", "val_fid"):
                per = [out[f"{metric}_{key}"] for key in self.directions if f"{metric}_{key}" in out]
                if len(per) == len(self.directions):
                    out[metric] = float(np.mean(per))
        was = {k: n.training for k, n in self.recipe.nets.items()}
        for net in self.recipe.nets.values():
            net.eval()
        out.update(self.recipe.validation_extras(inputs, fakes))
        for k, net in self.recipe.nets.items():
            net.train(was[k])
        out.update({"val_split": self.split, "val_images": len(next(iter(fakes.values()))), **self.baseline})
        if self.inception is not None:
            out["val_fid_backbone"] = self.backbone["name"]
        return out


def parameter_checksums(nets: dict[str, torch.nn.Module]) -> torch.Tensor:
    """One float64 number per network (sum and a position-weighted sum of its parameters)."""
    sums = []
    for net in nets.values():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in net.parameters()])
        sums += [flat.sum(), (flat * torch.linspace(1, 2, len(flat), dtype=torch.float64)).sum()]
    return torch.stack(sums)


def check_ranks_in_sync(nets: dict[str, torch.nn.Module], world: int) -> None:
    """Fail loudly if any rank's weights differ from rank 0's: a DDP reducer that silently skips a
    network (a known failure of GAN code) would otherwise train N different models."""
    mine = parameter_checksums(nets)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"rank {rank}'s weights differ from rank 0's: data-parallel training is broken "
                               f"({other.tolist()} vs {gathered[0].tolist()})")


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """A batch on ``device``: collated uint8 ``Pixels`` are copied (asynchronously from pinned memory), cropped,
    flipped and made float there, so the training process's CPU does no per-pixel work; tensors are moved."""
    last = channels_last and device.type == "cuda"
    fmt = torch.channels_last if last else torch.contiguous_format
    return {k: v.to(device, channels_last=last) if isinstance(v, Pixels)
            else v.to(device, non_blocking=True, memory_format=fmt) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def metrics_until(uri: str, options: storage.StoreOptions | None, epoch: int) -> list[str]:
    """The run's metrics.jsonl lines up to ``epoch``: a resumed run's log drops those of the epochs it trains
    again (trained past its last checkpoint)."""
    path = storage.join(uri, "metrics.jsonl")
    previous = storage.read_bytes(path, options).decode().splitlines() if storage.exists(path, options) else []
    return [line for line in previous if line and json.loads(line)["epoch"] <= epoch]


def _tensorboard_folder() -> Path:
    """A temporary folder for TensorBoard's event files (it writes local files only), named by this process, so
    that any later run removes the folders of processes that died without removing theirs (killed drivers and
    workers)."""
    mine = watchdog.start_time(os.getpid())
    for old in Path(tempfile.gettempdir()).glob("ganime-tb-*-*-*") if mine else ():  # without /proc: none
        pid, start = old.name.split("-")[2:4]
        if pid.isdigit() and watchdog.start_time(int(pid)) != start:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"ganime-tb-{os.getpid()}-{mine}-"))


class RunLog:
    """Rank 0's record of the run: metrics.jsonl, TensorBoard scalars and sample grids, on the store."""

    def __init__(self, uri: str, options, start_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.uri, self.options = uri, options
        self.tb_dir = _tensorboard_folder()
        self.tb = SummaryWriter(str(self.tb_dir))
        self.lines = metrics_until(uri, options, start_epoch)

    def epoch(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.tb.add_scalar(k, v, metrics["epoch"])
        self.tb.flush()
        self.lines.append(json.dumps(metrics))
        storage.write_bytes(storage.join(self.uri, "metrics.jsonl"), ("\n".join(self.lines) + "\n").encode(),
                            self.options)
        storage.upload(str(self.tb_dir), storage.join(self.uri, "tensorboard"), self.options)

    def close(self) -> None:
        self.tb.close()
        shutil.rmtree(self.tb_dir, ignore_errors=True)

    def samples(self, epoch: int, rows: list[list[np.ndarray]]) -> None:
        png = images.encode_png(preview.sample_sheet(rows))
        storage.write_bytes(storage.join(self.uri, "samples", f"epoch_{epoch:04d}.png"), png, self.options)


def _start_state(loop_config: dict, options: storage.StoreOptions | None, registered) -> dict | None:
    """The state a worker starts from: the driver's ``resume_point``, unless Ray restarts the workers after a
    failure and has registered a newer checkpoint of this fit since (``registered``, get_checkpoint's)."""
    resume = loop_config["resume"]
    if registered is not None:
        uri = storage.join(loop_config["run_uri"], _name(registered.path))
        if resume is None or checkpoints.epoch_of(uri) > resume["epoch"]:
            return checkpoints.load(uri, options)[0]
    return checkpoints.load(resume["uri"], options)[0] if resume else None


def ray_checkpoint(uri: str, options: storage.StoreOptions | None):
    """A checkpoint folder of the store as Ray Train's Checkpoint (what callbacks are given)."""
    import ray.train

    loc = storage.resolve(uri, options)
    return ray.train.Checkpoint(loc.path, filesystem=loc.pa_fs)


class LocalRun:
    """Ray Train's part in a run, for the loop run in this process (``train.num_workers: 0``; Ray Train's own
    local mode cannot run inside a Tune trial): rank 0 of 1, the streams' datasets unsplit, and what its
    controller does with a report: each checkpoint copied into the run folder (state.pt before the meta.json
    that vouches for it), checkpoints beyond ``train.keep_checkpoints`` deleted oldest first, every report
    passed to the callbacks (``after_report``, as Ray Train calls them); the last is the fit's result."""

    def __init__(self, uri: str, options: storage.StoreOptions | None, keep: int | None, callbacks: tuple,
                 use_gpu: bool, datasets: dict):
        self.uri, self.options, self.keep, self.callbacks, self.datasets = uri, options, keep, callbacks, datasets
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.metrics: dict = {}
        self.checkpoint: str | None = None

    def report(self, metrics: dict, folder: str | None = None) -> None:
        checkpoint = None
        if folder is not None:
            target = storage.join(self.uri, checkpoints.folder_name(metrics["epoch"]))
            if storage.exists(target, self.options):  # an epoch trained again after its checkpoint was skipped
                storage.remove(target, recursive=True, options=self.options)
            for name in (checkpoints.STATE_FILE, checkpoints.META_FILE):
                storage.upload(os.path.join(folder, name), storage.join(target, name), self.options)
            if self.keep:
                for old in checkpoints.run_checkpoints(self.uri, self.options)[self.keep:]:
                    storage.remove(old, recursive=True, options=self.options)
            checkpoint, self.checkpoint = ray_checkpoint(target, self.options), target
        self.metrics = metrics
        for callback in self.callbacks:
            callback.after_report(None, [metrics], checkpoint)


@contextlib.contextmanager
def worker_threads(cpus: float) -> Iterator[None]:
    """Torch's CPU threads as Ray gives a worker of ``cpus`` CPUs (OMP_NUM_THREADS, unless set: floor, at least
    1), so that local mode computes bit for bit what a Ray Train worker would."""
    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(math.floor(cpus), 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker, or in this process with a ``LocalRun`` as ``loop_config["local"]``."""
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    cfg = Config.model_validate(loop_config["cfg"])
    uri, options = loop_config["run_uri"], cfg.store.options()
    local: LocalRun | None = loop_config.get("local")
    if local:
        rank, world, device = 0, 1, local.device
    else:
        context = ray.train.get_context()
        rank, world, device = context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    recipe = recipe_class(cfg.recipe)(cfg, device, rank=rank)
    if world > 1:
        # One DDP wrapper per trained network: the G and D steps each synchronise only their own gradients.
        # No buffer broadcast: D runs twice per step (real, fake), and its BN statistics are never used.
        ids = [device.index] if device.type == "cuda" else None
        recipe.wrap(lambda net: DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False))
        torch.manual_seed(cfg.train.seed + rank)  # but each rank its own dropout masks

    if rank == 0:  # a restarted worker group of a driver taken over stops before it trains
        lease.check_held(uri, loop_config["lease"], options)
    start_epoch, step = 0, 0
    state = _start_state(loop_config, options, registered=None if local else ray.train.get_checkpoint())
    if state is not None:
        recipe.load_state_dict(state["recipe"])
        start_epoch, step = state["epoch"], state["global_step"]
        restore_rank_state(state, recipe, rank, world)
    data = ShardData(loop_config["dataset_uri"], cfg.data, options, device=device)
    streams = type(recipe).streams
    sources = local.datasets if local else {stream: ray.train.get_dataset_shard(stream) for stream in streams}
    log = RunLog(uri, options, start_epoch) if rank == 0 else None
    fixed = _to_device(_fixed_sample_batch(data, recipe), device, cfg.train.channels_last) if rank == 0 else None
    validate = Validator(data, cfg, recipe, device) if rank == 0 and cfg.eval.val_images else None
    extra_checkpoints = set(loop_config.get("checkpoint_epochs", ()))

    for epoch in range(start_epoch, cfg.train.epochs):
        started, sums, n_steps, n_images = time.perf_counter(), defaultdict(float), 0, 0
        recipe.epoch = epoch
        # Closed when left early (max_steps_per_epoch): in local mode this process outlives the epoch's iterators.
        with contextlib.closing(data.train_batches(sources, streams, epoch)) as batches:
            for batch in batches:
                batch = _to_device(batch, device, cfg.train.channels_last)
                recipe.global_step = step
                losses = recipe.train_step(batch)
                for k, v in losses.items():  # tensors: no host sync per step
                    sums[k] = sums[k] + v
                n_steps, n_images, step = n_steps + 1, n_images + len(batch["id"]), step + 1
                if cfg.train.max_steps_per_epoch and n_steps >= cfg.train.max_steps_per_epoch:
                    break
        if n_steps == 0:
            raise ValueError(f"epoch {epoch + 1}: no batches (fewer training examples than data.batch_size "
                             f"{cfg.data.batch_size} per worker?)")
        seconds = time.perf_counter() - started
        lrs = recipe.learning_rates()  # the LR this epoch trained with
        recipe.end_epoch()
        totals = torch.stack([torch.as_tensor(float(sums[k])) for k in sorted(sums)] + [torch.tensor(float(n_images))])
        if world > 1:
            torch.distributed.all_reduce(totals)
        *loss_sums, images_total = totals.tolist()
        metrics = {"epoch": epoch + 1, "global_step": step, "epoch_time_s": seconds,
                   "images_per_s": images_total / seconds, **lrs,
                   **{k: s / (n_steps * world) for k, s in zip(sorted(sums), loss_sums)},
                   # which weights the losses' frozen networks have, e.g. vgg_weights: "RANDOM-INIT VGG19 (...)"
                   **{f"{k}_weights": ident["name"] + (f" sha256:{ident['sha256'][:16]}" if ident["sha256"] else "")
                      for k, ident in recipe.pretrained.items()}}
        if validate is not None:
            metrics.update(validate())

        last = epoch + 1 == cfg.train.epochs or epoch + 1 == cfg.train.stop_after
        checkpointed = (epoch + 1) % cfg.train.checkpoint_every == 0 or last or epoch + 1 in extra_checkpoints
        if world > 1 and checkpointed:
            check_ranks_in_sync(recipe.nets, world)
            metrics["ranks_in_sync"] = True
        if rank == 0:
            lease.check_held(uri, loop_config["lease"], options)  # before the run's log and checkpoint are written
            log.epoch(metrics)
            if (epoch + 1) % cfg.train.sample_every == 0 or last or epoch == start_epoch:
                log.samples(epoch + 1, recipe.samples(fixed))
        if checkpointed:
            ranks = gather_rank_states(recipe, world)
            with tempfile.TemporaryDirectory() as folder:
                if rank == 0:
                    save_checkpoint(Path(folder), recipe, cfg, epoch + 1, step, metrics, ranks)
                if local:
                    local.report(metrics, folder)
                else:
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0
                                     else None, checkpoint_dir_name=checkpoints.folder_name(epoch + 1))
        elif local:
            local.report(metrics)
        else:
            ray.train.report(metrics)
        if epoch + 1 == cfg.train.stop_after:
            break
    if log is not None:
        log.close()


# ------------------------------------------------------------------------------------ the driver


def check_resources(cfg: Config, extra_cpus: float = 0.0) -> bool:
    """Whether the run uses GPUs (``train.use_gpu``, or auto: the cluster has some), after checking that the
    connected Ray can ever hold it: its workers, plus ``data.task_cpus`` for Ray Data's decode tasks (without a
    CPU left for them the input pipeline stalls) and ``extra_cpus`` (a sweep trial's driver). On this machine's
    own Ray, too much is a one-line ConfigError naming the keys to change (Ray Train would wait a minute, fail,
    and retry for ever); a cluster joined through $RAY_ADDRESS may scale up, so it is told what is waited for."""
    import ray

    total = ray.cluster_resources()
    t = cfg.train
    if t.num_workers == 0:  # local mode: this process trains, on its own GPU if it sees one
        use_gpu = torch.cuda.is_available() if t.use_gpu is None else t.use_gpu
        if use_gpu and not torch.cuda.is_available():
            raise ConfigError("train.use_gpu: true, but this process sees no CUDA device (train.num_workers 0 "
                              "trains in this process)")
    else:
        use_gpu = t.use_gpu if t.use_gpu is not None else total.get("GPU", 0) > 0
    need = {"CPU": t.num_workers * t.cpus_per_worker + cfg.data.task_cpus + extra_cpus,
            **({"GPU": float(t.num_workers)} if use_gpu and t.num_workers else {})}
    if all(v <= total.get(k, 0) + 1e-9 for k, v in need.items()):
        return use_gpu
    wants = (f"train.num_workers {t.num_workers} x train.cpus_per_worker {t.cpus_per_worker:g}"
             + (" (and a GPU each)" if use_gpu else "") + f" + data.task_cpus {cfg.data.task_cpus:g}"
             + (f" + {extra_cpus:g} for the sweep's trial driver" if extra_cpus else ""))
    needs = ", ".join(f"{v:g} {k}" for k, v in need.items())
    has = ", ".join(f"{total.get(k, 0):g} {k}" for k in need)
    if os.environ.get("RAY_ADDRESS", "local") != "local":
        print(f"waiting for the cluster to offer {needs} ({wants}); it has {has} now", flush=True)
        return use_gpu
    raise ConfigError(f"this machine's Ray has {has}, the run needs {needs} ({wants}): lower "
                      f"train.cpus_per_worker or train.num_workers" + (", or set train.use_gpu: false"
                                                                       if use_gpu else ""))


def fit(cfg: Config, run_uri: str | None = None, callbacks: tuple = (),
        checkpoint_epochs: tuple[int, ...] = (), wait_for_run_s: float = 0.0, show_progress: bool = True) -> dict:
    """Train ``cfg`` on the connected Ray cluster; returns where the run, its checkpoint and metrics are.

    The run lives at ``run_uri`` (default ``<store>/runs/<run_name>``); an existing run there resumes, unless
    a live driver holds it (``lease``): then RunInUse, after waiting up to ``wait_for_run_s`` for it to end.
    ``callbacks``: Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` when a sweep trial runs this.
    ``checkpoint_epochs``: epochs to checkpoint besides every ``train.checkpoint_every`` (a sweep's rungs).
    ``show_progress``: a line per epoch on stdout (``progress.RunProgress``)."""
    from ray_ganime.runtime import init_ray

    recipe_cls = recipe_class(cfg.recipe)
    recipe = recipe_cls.unbuilt(cfg)  # its options checked: fail before any worker starts
    options = cfg.store.options()
    data = ShardData.from_config(cfg)  # the store's first use: an unreachable one fails here, before Ray starts
    if data.kind != recipe_cls.task:
        raise ValueError(f"recipe {cfg.recipe} trains on {recipe_cls.task} data, but {data.uri} is {data.kind}")
    for name in recipe.batch_names():  # e.g. A_lineart without data.views {image: [lineart]}
        data.locate(name)
    if run_uri is not None:
        name = run_uri.rstrip("/").rsplit("/", 1)[-1]
    else:
        name = run_name(cfg)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"run_name": name})})
    uri = run_uri or default_run_uri(cfg, name)
    storage.check_writable(uri, options)
    init_ray()
    use_gpu = check_resources(cfg)  # before anything is written: a run that cannot start leaves no folder
    with lease.Lease(uri, options, wait_s=wait_for_run_s) as held:
        return _fit(cfg, recipe, data, uri, use_gpu, callbacks, checkpoint_epochs, show_progress, held.generation)


def _fit(cfg: Config, recipe, data: ShardData, uri: str, use_gpu: bool, callbacks: tuple,
         checkpoint_epochs: tuple[int, ...], show_progress: bool, generation: int) -> dict:
    """``fit`` once the run is checked and its lease (``generation``) held."""
    recipe_cls, options = type(recipe), cfg.store.options()
    resume = resume_point(uri, cfg.train.resume_from, options)
    first, t = (resume["epoch"] if resume else 0), cfg.train
    if resume and first >= t.epochs:
        # Complete already: a sweep resumed after this trial's last epoch but before Tune recorded it. Its last
        # report again, so that Tune (the callbacks) sees the trial complete.
        metrics = json.loads(metrics_until(uri, options, first)[-1])
        for callback in callbacks:
            callback.after_report(None, [metrics], ray_checkpoint(resume["uri"], options))
        return {"run": uri, "name": t.run_name, "metrics": metrics, "skipped_rows": 0, "checkpoint": resume["uri"]}
    factor, o = recipe.lr_rule()(first), cfg.optim
    print(f"learning rate, epoch {first + 1}: G {o.lr_g * factor:.3g}, D {o.lr_d * factor:.3g} ({o.schedule}"
          + (f", decay over the last {min(o.decay_epochs, cfg.train.epochs)} of {cfg.train.epochs} epochs"
             if o.schedule == "linear" and o.decay_epochs else "") + ")", flush=True)
    storage.write_bytes(storage.join(uri, "config.yaml"),
                        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode(), options)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "run_uri": uri, "dataset_uri": data.uri, "resume": resume,
                   "checkpoint_epochs": list(checkpoint_epochs), "lease": generation}
    datasets = data.stream_datasets(recipe_cls.streams)
    if show_progress:  # the epochs to train again must not show as new until rank 0 rewrites the log
        kept = metrics_until(uri, options, first)
        if kept or storage.exists(storage.join(uri, "metrics.jsonl"), options):
            storage.write_bytes(storage.join(uri, "metrics.jsonl"), "".join(f"{line}\n" for line in kept).encode(),
                                options)
    shown = progress.RunProgress(uri, options, t.epochs, first, t.checkpoint_every) if show_progress else None
    try:
        metrics, checkpoint = _train(cfg, loop_config, datasets, uri, use_gpu, callbacks)
    except Exception as e:
        failure = storage.store_failure(e)
        if failure is None:
            raise
        if isinstance(failure, lease.RunTakenOver):  # the run is another driver's now: no resume to offer
            raise failure from e
        # One line (Ray's wrappers would add pages of traceback): what failed and where the run can resume.
        raise RunFailed(f"{storage.translate_error(uri, failure, options)}; {_last_checkpoint(uri, options, shown)}"
                        ) from e
    finally:
        if shown is not None:
            shown.close()
    skipped, reasons = data.skipped()
    if skipped:
        print(f"skipped {skipped} rows that did not decode, e.g. {reasons[:3]}")
    return {"run": uri, "name": cfg.train.run_name, "metrics": metrics, "skipped_rows": skipped,
            "checkpoint": checkpoint}


class RunFailed(storage.StorageError):
    """The store failed under a run (no space left, S3 lost): one line, with where the run can resume."""


def _last_checkpoint(uri: str, options: storage.StoreOptions | None, shown: progress.RunProgress | None) -> str:
    try:
        newest = checkpoints.newest_valid(uri, options).uri
    except storage.StorageError:  # the store is what failed: the newest one this driver saw complete
        newest = shown.checkpoint if shown is not None else None
        if newest is None:
            return "the last complete checkpoint could not be looked up; re-run the same command once the store " \
                   "works to resume from it"
    if newest is None:
        return "no checkpoint was complete"
    return f"last complete checkpoint: {newest} (re-run the same command to resume from it)"


def _train(cfg: Config, loop_config: dict, datasets: dict, uri: str, use_gpu: bool,
           callbacks: tuple) -> tuple[dict, str | None]:
    """The training loop in this process or on Ray Train workers: the last metrics and checkpoint."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    t, options = cfg.train, cfg.store.options()
    if t.num_workers == 0:
        local = LocalRun(uri, options, t.keep_checkpoints, callbacks, use_gpu, datasets)
        with worker_threads(t.cpus_per_worker):
            train_loop({**loop_config, "local": local})
        metrics, checkpoint = local.metrics, local.checkpoint
    else:
        runs = storage.resolve(uri.rstrip("/").rsplit("/", 1)[0], options)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker={
                "CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
            run_config=ray.train.RunConfig(
                name=t.run_name, storage_path=runs.path, storage_filesystem=runs.pa_fs,
                failure_config=ray.train.FailureConfig(max_failures=t.max_failures), callbacks=list(callbacks),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints)),
            datasets=datasets,
            # One worker reads whole streams: no split, so no split-coordinator actor per stream to start and
            # synchronise with every epoch (the same rows in the same order).
            dataset_config=ray.train.DataConfig(
                datasets_to_split="all" if t.num_workers > 1 else [],
                execution_options=ray.data.ExecutionOptions(preserve_order=cfg.data.deterministic)),
        )
        result = trainer.fit()
        metrics = dict(result.metrics or {})
        checkpoint = checkpoints.uri_of(cfg.store.uri, result.checkpoint.path) if result.checkpoint else None
    return metrics, checkpoint
