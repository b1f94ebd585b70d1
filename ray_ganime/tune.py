"""Loss-weight sweeps on Ray Tune: every trial is a Ray Train run, ranked by a per-epoch validation metric.

A sweep is a training config in which some values are search dimensions (``loss.tv: {loguniform: [1e-5,
1e-3]}``; see ``config.TuneConfig``). Each trial is a Tune function that builds the trial's config and
runs ``train.fit`` on it, so a trial is an ordinary Ray Train run (1..N workers, DDP, checkpoints) whose
per-epoch results reach Tune through ``TuneReportCallback``; ASHA (``asha.PromotingASHA``) pauses every
trial at each rung and runs on only the best.

Per sweep, under ``<store>/sweeps/<name>/``:
    sweep.yaml            the config as given (search dimensions included): what ``--resume`` re-reads
    runs/<trial_id>/      each trial's training run (checkpoints, metrics.jsonl, samples, TensorBoard)
    <trial_id>/           Tune's own records of the trial;  experiment_state-*.json: Tune's resume state
    results.csv, results.md   one row per trial: config values, metrics, epochs run, stopped early or not
    objective.png         the objective over epochs, one line per trial
The best trial's final checkpoint becomes a model package per generator (``<store>/models/<export_name>``, or
``<export_name>-a2b`` and ``-b2a`` for a recipe with several). The objective (``tune.metric``) is any
per-epoch validation metric the recipe reports (``recipe.metric_names()``), checked before a trial starts.
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import itertools
import json
import math
import random
from typing import Any

import yaml

from ray_ganime import checkpoints, storage
from ray_ganime.config import SEARCH_KINDS, Config, ConfigError, from_tree, search_dimensions, set_path

SWEEP_FILE = "sweep.yaml"
RANGE_KINDS = ("uniform", "loguniform", "quniform", "randint")


# ------------------------------------------------------------------------------------ search spaces


def split_space(tree: dict) -> tuple[dict, dict[str, dict]]:
    """(the config tree without its search dimensions, {dotted key: {kind: args}}), checked for form."""
    space = {**search_dimensions(tree), **(tree.get("tune") or {}).get("space", {})}
    base = copy.deepcopy(tree)
    for key in search_dimensions(tree):
        *parents, leaf = key.split(".")
        node = base
        for part in parents:
            node = node[part]
        del node[leaf]
    base.setdefault("tune", {})["space"] = {}
    for key, spec in space.items():
        _check_spec(key, spec)
    return base, space


def _check_spec(key: str, spec: Any) -> None:
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SEARCH_KINDS):
        raise ConfigError(f"{key}: a search dimension is one of {{kind: args}} with kind in {SEARCH_KINDS}, "
                          f"got {spec!r}")
    (kind, args), = spec.items()
    if kind in RANGE_KINDS:
        want = 3 if kind == "quniform" else 2
        if not (isinstance(args, list) and len(args) == want and all(isinstance(a, (int, float)) for a in args)
                and args[0] < args[1]):
            raise ConfigError(f"{key}: {kind} takes [low, high{', q' if want == 3 else ''}] with low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{key}: loguniform needs low > 0, got {args!r}")
    elif not (isinstance(args, list) and args):
        raise ConfigError(f"{key}: {kind} takes a non-empty list of values, got {args!r}")


def _probe_values(spec: dict) -> list:
    (kind, args), = spec.items()
    if kind == "randint":
        return [args[0], args[1] - 1]
    return list(args[:2]) if kind in RANGE_KINDS else list(args)


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    tree = copy.deepcopy(base)
    for key, value in params.items():
        set_path(tree, key.split("."), value)
    return tree


def check_space(base: dict, space: dict[str, dict]) -> Config:
    """Validate the config at the ends of every dimension (unknown keys, out-of-range weights, a recipe's
    own options) before any trial starts; returns the config at the first probe."""
    from ray_ganime.recipes import recipe_class

    probes = [_probe_values(spec) for spec in space.values()]
    combos = list(itertools.product(*probes)) if math.prod(map(len, probes)) <= 256 else [tuple(p[0] for p in probes)]
    first = None
    for combo in combos:
        cfg = from_tree(apply_params(base, dict(zip(space, combo))))
        recipe_class(cfg.recipe).options(cfg)
        first = first or cfg
    return first


def check_metric(cfg: Config) -> None:
    """ConfigError unless ``tune.metric`` is a per-epoch validation metric of the recipe (listing those)."""
    from ray_ganime.recipes import recipe_class

    names = recipe_class(cfg.recipe).unbuilt(cfg).metric_names()
    if cfg.tune.metric not in names:
        raise ConfigError(f"tune.metric={cfg.tune.metric!r}: recipe {cfg.recipe} does not report it; its per-epoch "
                          f"validation metrics are {', '.join(names)}")


def tune_domains(space: dict[str, dict], search: str) -> dict[str, Any]:
    """Our YAML dimensions as Tune search domains."""
    from ray import tune

    domains = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        if search == "grid" and kind in RANGE_KINDS:
            raise ConfigError(f"{key}: tune.search=grid needs listed values (choice or grid), not {kind}")
        if search == "optuna" and kind == "grid":
            raise ConfigError(f"{key}: Optuna samples its values; write {{choice: {args}}} instead of grid")
        if kind == "grid" or (kind == "choice" and search == "grid"):
            domains[key] = tune.grid_search(args)
        elif kind == "choice":
            domains[key] = tune.choice(args)
        else:
            domains[key] = getattr(tune, kind)(*args)
    return domains


GRID_POINT = "grid_point"  # the one Tune dimension that shuffled_grid makes of all grid dimensions


def shuffled_grid(domains: dict[str, Any], seed: int) -> dict[str, Any]:
    """The grid dimensions of ``domains`` as one grid over the points of their product, in a seeded
    random order.

    ASHA promotes from a rung as soon as it holds enough trials, so the first trials to arrive decide the
    first promotions. Tune expands a grid in nested order (last key fastest), and along that order the
    objective often rises or falls steadily (a learning rate, a weight): the first promotions would then
    go to one end of the grid rather than to the best of a fair sample."""
    from ray import tune

    grids = {k: v["grid_search"] for k, v in domains.items() if isinstance(v, dict) and "grid_search" in v}
    if not grids:
        return domains
    points = [dict(zip(grids, values)) for values in itertools.product(*grids.values())]
    random.Random(seed).shuffle(points)
    return {**{k: v for k, v in domains.items() if k not in grids}, GRID_POINT: tune.grid_search(points)}


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with shuffled_grid's point unpacked back into its dotted keys."""
    return {**{k: v for k, v in config.items() if k != GRID_POINT}, **config.get(GRID_POINT, {})}


# ------------------------------------------------------------------------------------ trials


def trial_dirname(trial) -> str:
    # Tune makes trial ids; checked all the same, as they become folders next to the user's runs.
    return storage.check_name(trial.trial_id, "trial name")


def run_trial(params: dict, base: dict, sweep_uri: str, rungs: tuple[int, ...] = ()) -> None:
    """One trial (runs in a Tune actor): the trial's config as an ordinary Ray Train run. The run is
    named by the trial id, so a trial that Tune re-launches (ASHA resuming it from a rung, ``--resume``,
    ``tune.max_failures``) continues from its own last checkpoint; every rung epoch is checkpointed."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_ganime import lease, train

    cfg = from_tree(apply_params(base, flat_params(params)))
    trial_id = storage.check_name(tune.get_context().get_trial_id(), "trial name")
    reporter = TuneReportCallback() if cfg.train.num_workers else ReportToTune()
    # A trial relaunched on another node may find its previous process's lease not yet lapsed: wait it out.
    train.fit(cfg, run_uri=storage.join(sweep_uri, "runs", trial_id), callbacks=(reporter,), checkpoint_epochs=rungs,
              wait_for_run_s=lease.TTL_S + lease.CLOCK_SKEW_S, show_progress=False)  # Tune's table shows trials


class ReportToTune:
    """A local-mode trial's reports (train.num_workers 0: the trial's own actor trains) straight to Tune, as
    TuneReportCallback passes a Ray Train worker's on."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

        tune.report({**metrics[0], **({CHECKPOINT_PATH_KEY: checkpoint.path} if checkpoint else {})})


def trial_resources(cfg: Config, use_gpu: bool) -> dict[str, float]:
    """What each trial's own actor holds: the driver of its Ray Train run, or in local mode the trainer."""
    if cfg.train.num_workers == 0:
        return {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    return {"CPU": cfg.tune.driver_cpus}


def default_concurrency(cfg: Config, use_gpu: bool) -> int:
    """Trials that fit at once: by GPUs (each trial's workers take one each), else by CPUs, keeping one
    CPU free for Ray Data's decode tasks (without it every trial's input pipeline stalls)."""
    import ray

    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 0) // max(cfg.train.num_workers, 1)))
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker + trial_resources(cfg, use_gpu)["CPU"]
    return max(1, int((resources.get("CPU", 1) - 1) // per_trial))


# ------------------------------------------------------------------------------------ the sweep


def sweep_uri(store_uri: str, name: str) -> str:
    return storage.join(store_uri, "sweeps", storage.check_name(name, "sweep name"))


def new_name(tree: dict) -> str:
    """A sweep's name when none is given: its recipe and the time."""
    recipe = tree.get("recipe") or Config.model_fields["recipe"].default
    return f"sweep-{recipe}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"


def run(tree: dict, resume: str | None = None) -> dict:
    """Run a sweep from a config tree with search dimensions, or finish the sweep ``resume`` (its
    unfinished and errored trials; finished ones are kept as they are). Returns where everything is."""
    from ray import tune

    from ray_ganime.runtime import init_ray

    store = from_tree(split_space(tree)[0]).store
    if resume:
        uri = sweep_uri(store.uri, resume)
        path = storage.join(uri, SWEEP_FILE)
        if not storage.exists(path, store.options()):
            raise FileNotFoundError(f"no sweep to resume at {uri} (no {SWEEP_FILE})")
        tree = yaml.safe_load(storage.read_bytes(path, store.options()))
    base, space = split_space(tree)
    if not space:
        raise ConfigError("nothing to search: write a dimension in place of a value, e.g. "
                          "loss: {tv: {loguniform: [1.0e-5, 1.0e-3]}}")
    cfg = check_space(base, space)
    t = cfg.tune
    if not cfg.eval.val_images:
        raise ConfigError("a sweep ranks trials by per-epoch validation: eval.val_images must be > 0")
    check_metric(cfg)
    if "fid" in t.metric:
        base["eval"] = {**base.get("eval", {}), "val_fid": True}
    name = resume or t.name or new_name(tree)
    uri = sweep_uri(cfg.store.uri, name)
    options = cfg.store.options()

    init_ray()
    from ray_ganime import train

    # A trial that can never start: an error now.
    use_gpu = train.check_resources(cfg, extra_cpus=trial_resources(cfg, use_gpu=False)["CPU"])
    sweeps = storage.resolve(storage.join(cfg.store.uri, "sweeps"), options)
    concurrency = t.max_concurrent_trials or default_concurrency(cfg, use_gpu)
    scheduler = _scheduler(cfg, concurrency)
    rungs = tuple(getattr(scheduler, "rungs", ()))  # ASHA's: every trial checkpoints there
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, sweep_uri=uri, rungs=rungs),
                                    trial_resources(cfg, use_gpu))
    if resume:
        experiment = storage.resolve(uri, options)
        if not tune.Tuner.can_restore(experiment.path, storage_filesystem=experiment.pa_fs):
            raise FileNotFoundError(f"{uri}: Tune has no state to resume from (the driver died before saving any)")
        tuner = tune.Tuner.restore(experiment.path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=experiment.pa_fs)
    else:
        if storage.exists(storage.join(uri, SWEEP_FILE), options):
            raise FileExistsError(f"sweep {name} already exists at {uri}: `ganime tune --resume {name}` finishes it")
        storage.write_bytes(storage.join(uri, SWEEP_FILE), yaml.safe_dump(tree, sort_keys=False).encode(), options)
        listed = all(next(iter(spec)) == "grid" or t.search == "grid" for spec in space.values())
        domains = tune_domains(space, t.search)
        if t.scheduler == "asha":
            domains = shuffled_grid(domains, t.seed)
        tuner = tune.Tuner(
            trainable,
            param_space=domains,
            tune_config=tune.TuneConfig(
                metric=t.metric, mode=t.resolved_mode(), search_alg=_search_alg(t, concurrency),
                scheduler=scheduler, num_samples=t.num_samples or (1 if listed else 8),
                trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=sweeps.path, storage_filesystem=sweeps.pa_fs,
                                      failure_config=tune.FailureConfig(max_failures=t.max_failures), verbose=1),
        )
    grid = tuner.fit()
    rows = trial_rows(grid, cfg, uri, list(space))
    files = write_results(rows, cfg, uri, list(space), options)
    out = {"sweep": uri, "name": name, "metric": t.metric, "trials": rows, **files}
    finished = [r for r in rows if r["objective"] is not None and r["checkpoint"]]
    if not finished:
        raise RuntimeError(f"no trial of {uri} finished an epoch with a checkpoint; see {files['markdown']}")
    best = (max if t.resolved_mode() == "max" else min)(finished, key=lambda r: r["objective"])
    out["best"] = best
    if t.export:
        out["packages"] = export_best(best, cfg, t.export_name or name, overwrite=bool(resume))
    return out


def _search_alg(t, concurrency: int):
    """The search algorithm, limiting running trials to ``concurrency`` (paused ones do not count)."""
    from ray_ganime.asha import PausableLimit, PausableVariants

    if t.search == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError("tune.search=optuna needs Optuna: pip install 'ray-ganime[optuna]'") from None
        return PausableLimit(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=t.seed)), concurrency)
    return PausableVariants(max_concurrent=concurrency, random_state=t.seed)


def _scheduler(cfg: Config, concurrency: int):
    from ray.tune.schedulers import FIFOScheduler

    from ray_ganime.asha import PromotingASHA

    t = cfg.tune
    if t.scheduler == "none":
        return FIFOScheduler()
    # Our own epoch counter as ASHA's clock: a trial re-launched from its checkpoint repeats Tune's
    # iterations but not epochs.
    return PromotingASHA(time_attr="epoch", max_t=cfg.train.epochs, grace_period=t.grace_period,
                         reduction_factor=t.reduction_factor, max_concurrent=concurrency)


# ------------------------------------------------------------------------------------ results


def trial_rows(grid, cfg: Config, uri: str, keys: list[str]) -> list[dict]:
    """One row per trial from its own run's metrics.jsonl (one line per epoch, also after a resume)."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY  # where either callback puts a checkpoint

    rows = []
    for result in grid:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        trial_id = trial_id or result.path.rstrip("/").rsplit("/", 1)[-1]
        run = storage.join(uri, "runs", trial_id)
        # Epochs Tune saw: a trial paused at a rung may have run on a little before its actor stopped.
        reported = (result.metrics or {}).get("epoch", 0)
        history = [h for h in _history(run, cfg.store.options()) if h["epoch"] <= reported]
        last = history[-1] if history else {}
        epochs = int(last.get("epoch", 0))
        paths = result.metrics_dataframe.get(CHECKPOINT_PATH_KEY) if result.metrics_dataframe is not None else None
        checkpoint = next((p for p in reversed(list(paths.dropna())) if p), None) if paths is not None else None
        config = flat_params(result.config)
        rows.append({
            "trial": trial_id, **{k: config.get(k) for k in keys},
            "objective": last.get(cfg.tune.metric),
            **validation_metrics(last),
            # which pretrained weights the trial's losses and metrics used (e.g. vgg_weights, with its sha256)
            **{k: v for k, v in last.items() if k.endswith("_weights") and isinstance(v, str)},
            "epochs": epochs,
            "status": "error" if result.error else ("stopped early" if epochs < cfg.train.epochs else "completed"),
            "checkpoint": checkpoints.uri_of(cfg.store.uri, checkpoint) if checkpoint else None,
            "run": run, "history": [(h["epoch"], h.get(cfg.tune.metric)) for h in history],
            "baseline": {k[len("baseline_copy_"):]: v for k, v in last.items() if k.startswith("baseline_copy_")},
        })
    return sorted(rows, key=lambda r: r["trial"])


def validation_metrics(epoch: dict) -> dict[str, float]:
    """The per-epoch validation metrics a run logged for one epoch (``val_*`` numbers; not the split, the image
    count or the FID weights' name)."""
    return {k: v for k, v in epoch.items() if k.startswith("val_") and k != "val_images"
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _history(run: str, options) -> list[dict]:
    path = storage.join(run, "metrics.jsonl")
    if not storage.exists(path, options):
        return []
    return [json.loads(line) for line in storage.read_bytes(path, options).decode().splitlines() if line]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_results(rows: list[dict], cfg: Config, uri: str, keys: list[str], options) -> dict[str, str]:
    """results.csv, results.md and objective.png in the sweep folder; returns their URIs."""
    import pandas as pd

    metric, mode = cfg.tune.metric, cfg.tune.resolved_mode()
    logged = list(dict.fromkeys(k for r in rows for k in r if k.startswith("val_") or k.endswith("_weights")))
    columns = ["trial", *keys, "objective", *logged, "epochs", "status", "checkpoint"]
    table = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns).dropna(axis=1, how="all")
    table = table.rename(columns={"objective": metric}).loc[:, lambda df: ~df.columns.duplicated()]
    uris = {"csv": storage.join(uri, "results.csv"), "markdown": storage.join(uri, "results.md"),
            "plot": storage.join(uri, "objective.png")}
    storage.write_bytes(uris["csv"], table.to_csv(index=False).encode(), options)

    shown = [c for c in table.columns if c != "checkpoint"]
    lines = [f"# Sweep {uri.rstrip('/').rsplit('/', 1)[-1]}", "",
             f"Objective: {metric} ({mode}), last epoch of each trial; scheduler {cfg.tune.scheduler}, "
             f"search {cfg.tune.search}, {cfg.train.epochs} epochs per trial.", "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table[shown].itertuples(index=False)]
    # The same validation images for every trial: what copying the input scores on them, once, as a row.
    copy = next((r["baseline"] for r in rows if r.get("baseline")), {})
    if copy:
        lines.append("| " + " | ".join("baseline: copy the input" if c == "trial" else _fmt(copy.get(c))
                                       for c in shown) + " |")
    storage.write_bytes(uris["markdown"], ("\n".join(lines) + "\n").encode(), options)
    storage.write_bytes(uris["plot"], _plot(rows, metric, keys), options)
    return uris


def _plot(rows: list[dict], metric: str, keys: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in rows:
        points = [(e, v) for e, v in r["history"] if v is not None]
        if not points:
            continue
        label = r["trial"] + " " + ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(r[k])}" for k in keys)
        ax.plot(*zip(*points), marker="o", linestyle="--" if r["status"] != "completed" else "-", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch (dashed: stopped early)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def export_best(best: dict, cfg: Config, name: str, overwrite: bool) -> dict[str, str]:
    """The best trial's final checkpoint as model packages, one per generator ({direction: URI};
    ``export.export_packages``), every direction evaluated first when tune.evaluate_best."""
    from ray_ganime import evaluate, export

    evaluations = None
    if cfg.tune.evaluate_best:
        _, files = evaluate.evaluate_checkpoint(best["checkpoint"], cfg, out_uri=storage.join(best["run"], "eval"))
        evaluations = {d: storage.read_json(f["metrics"], cfg.store.options()) for d, f in files.items()}
    return export.export_packages(best["checkpoint"], name, cfg.store.uri, cfg.store.options(),
                                  evaluations=evaluations, overwrite=overwrite)
