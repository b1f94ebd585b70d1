"""The driver's view of a run in the terminal: one line per epoch, read from the run folder's metrics.jsonl.

The run folder is what every rank 0 writes wherever it runs (this process, a Ray Train worker on another node),
so the driver reads the epochs there instead of from Ray's forwarded worker output. On a terminal a tqdm bar
(stderr) counts the epochs below the lines; in a log file there are the lines alone.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from tqdm import tqdm

from ray_ganime import checkpoints, storage

# Bookkeeping fields of a metrics line, not shown per epoch.
HIDDEN = {"epoch", "global_step", "epoch_time_s", "images_per_s", "val_split", "val_images", "ranks_in_sync"}


def _number(value: float) -> str:
    return f"{value:.4g}"


def epoch_line(m: dict, epochs: int, eta_s: float | None) -> str:
    """``epoch 3/40  loss_D 0.45  loss_G 1.2  val_ssim 0.51  64 img/s  0.9 s  eta 0:36``."""
    losses = [f"{k} {_number(v)}" for k, v in sorted(m.items())
              if isinstance(v, float) and k not in HIDDEN and not k.startswith(("val_", "lr_", "baseline_"))]
    scores = [f"{k} {_number(v)}" for k, v in sorted(m.items()) if k.startswith("val_") and isinstance(v, float)]
    speed = f"{m['images_per_s']:.0f} img/s  {m['epoch_time_s']:.1f} s" if "images_per_s" in m else ""
    eta = f"eta {int(eta_s) // 3600}:{int(eta_s) % 3600 // 60:02d}:{int(eta_s) % 60:02d}" if eta_s is not None else ""
    return "  ".join(part for part in (f"epoch {m['epoch']}/{epochs}", *losses, *scores, speed, eta) if part)


def notices(m: dict) -> list[str]:
    """What the run should be told once: frozen networks or a metric backbone without real weights."""
    found = [f"{k[:-len('_weights')]} uses {v}" for k, v in m.items() if k.endswith("_weights") and "RANDOM" in str(v)]
    if "RANDOM" in str(m.get("val_fid_backbone", "")):
        found.append("val_fid is computed with a RANDOM-INIT Inception: not a real FID")
    told = [f"warning: {text}: its numbers are not comparable with runs that used the real weights" for text in found]
    copy = [f"{k[len('baseline_copy_'):]} {_number(v)}" for k, v in sorted(m.items()) if k.startswith("baseline_copy_")]
    return told + ([f"copying the input scores {'  '.join(copy)} on the same images"] if copy else [])


class RunProgress:
    """Prints each epoch that appears in ``<run>/metrics.jsonl`` after ``start_epoch``, polling every
    ``interval_s`` in a thread, until ``close``."""

    def __init__(self, run_uri: str, options: storage.StoreOptions | None, epochs: int, start_epoch: int,
                 checkpoint_every: int = 1, interval_s: float = 1.0):
        self.run_uri, self.uri = run_uri, storage.join(run_uri, "metrics.jsonl")
        self.options, self.epochs = options, epochs
        self.first = self.seen = start_epoch
        self.interval_s, self.started = interval_s, time.monotonic()
        self.told: set[str] = set()
        self.checkpoint: str | None = None  # the newest complete checkpoint seen
        self.checkpoint_every, self._pending = checkpoint_every, None  # an epoch whose checkpoint is not seen yet
        self.bar = tqdm(total=epochs, initial=start_epoch, unit="epoch", file=sys.stderr, leave=False,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ganime-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        try:
            if not storage.exists(self.uri, self.options):
                return
            lines = storage.read_bytes(self.uri, self.options).decode().splitlines()
        except storage.StorageError:  # the store is briefly unreachable: the run itself reports real failures
            return
        for line in lines:
            try:
                m = json.loads(line) if line.strip() else {}
            except ValueError:  # written whole by rank 0, but a store or a person may not
                continue
            if m.get("epoch", 0) <= self.seen:
                continue
            self.seen = m["epoch"]
            if self.seen % self.checkpoint_every == 0 or self.seen == self.epochs:
                self._pending = self.seen
            done = self.seen - self.first
            eta = (time.monotonic() - self.started) / done * (self.epochs - self.seen) if done else None
            for notice in notices(m):
                if notice not in self.told:
                    self.told.add(notice)
                    tqdm.write(notice, file=sys.stdout)
            tqdm.write(epoch_line(m, self.epochs, eta), file=sys.stdout)
            sys.stdout.flush()
            self.bar.update(self.seen - self.bar.n)
        if self._pending is not None:
            self._look_for_checkpoint(self._pending)

    def _look_for_checkpoint(self, epoch: int) -> None:
        """Remember the newest complete checkpoint (its meta.json comes last, after the epoch's metrics line):
        where to resume if the store is lost."""
        folder = storage.join(self.run_uri, checkpoints.folder_name(epoch))
        try:
            if storage.exists(storage.join(folder, checkpoints.META_FILE), self.options):
                self.checkpoint, self._pending = folder, None
        except storage.StorageError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the last epochs, written since the last look
        self.bar.close()
