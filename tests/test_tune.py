"""Sweeps: search spaces in the config, a 4-trial ASHA sweep on the shared local Ray, and resume after the
tune driver is killed.

Trials train in their own Tune actor (local mode, ``train.num_workers: 0``): Tune's scheduling, reporting and
resume are the same, without a Ray Train controller and worker group per trial. The killed ASHA sweep runs its
trials on Ray Train workers: a paused trial that comes back continues a Ray Train run of the same name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from ray_ganime import checkpoints, export, images, storage, tune
from ray_ganime.cli import main
from ray_ganime.config import ConfigError, from_tree, load_tree
from ray_ganime.demo import ensure_synthetic
from ray_ganime.recipes import recipe_class

DATASET = ("synthetic-paired-48x32", "paired", 48, 32)
TINY = {
    "recipe": "pix2pix",
    "model": {"ngf": 8, "ndf": 8},
    "data": {"uri": DATASET[0], "load_size": 36, "crop_size": 32, "batch_size": 4, "shuffle_buffer": 16,
             "map_batch_size": 64, "task_cpus": 0.5},
    "train": {"epochs": 3, "num_workers": 0, "cpus_per_worker": 0.5, "max_steps_per_epoch": 4,
              "checkpoint_every": 1, "sample_every": 100},
    "eval": {"val_images": 16, "fid_weights": "random", "actors": 0},  # the best trial evaluated in the driver
}


def sweep_tree(store: str, **sections) -> dict:
    tree = json.loads(json.dumps(TINY))
    tree["store"] = {"uri": store}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return tree


# ------------------------------------------------------------------------------------ search spaces (no Ray)


def test_dimensions_in_place_and_in_tune_space_are_found_and_removed():
    tree = {"loss": {"tv": {"loguniform": [1e-5, 1e-3]}, "l1": 100.0},
            "data": {"views": {"color": ["gray"]}},  # a mapping that is not a dimension stays
            "tune": {"space": {"loss.tv_norm": {"grid": ["l1", "l2"]}}}}
    base, space = tune.split_space(tree)
    assert space == {"loss.tv": {"loguniform": [1e-5, 1e-3]}, "loss.tv_norm": {"grid": ["l1", "l2"]}}
    assert base["loss"] == {"l1": 100.0} and base["data"] == {"views": {"color": ["gray"]}}
    assert base["tune"]["space"] == {} and tree["loss"]["tv"] == {"loguniform": [1e-5, 1e-3]}  # input untouched
    domains = tune.tune_domains(space, "random")
    assert domains["loss.tv_norm"] == {"grid_search": ["l1", "l2"]}
    assert 1e-5 <= domains["loss.tv"].sample() <= 1e-3


@pytest.mark.parametrize("spec, message", [
    ({"loguniform": [0, 1e-3]}, "low > 0"),
    ({"uniform": [1, 0]}, "low < high"),
    ({"choice": []}, "non-empty list"),
    ({"quniform": [0, 1]}, "q"),
])
def test_malformed_dimensions_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        tune.split_space({"loss": {"tv": spec}})


def test_every_end_of_every_dimension_is_validated_before_a_trial_starts():
    base, space = tune.split_space({"loss": {"tv": {"choice": [1e-4, -1.0]}}})
    with pytest.raises(ConfigError, match="loss.tv"):
        tune.check_space(base, space)
    base, space = tune.split_space({"loss": {"tvv": {"choice": [1e-4]}}})  # a typo in a searched key
    with pytest.raises(ConfigError, match="tvv"):
        tune.check_space(base, space)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_is_valid_and_sweeps_report_their_objective(path):
    """configs/ as users run them: every training config checks, every sweep's every dimension end checks and
    its objective is a metric the recipe reports (the e2e tests run a few of them for real)."""
    base, space = tune.split_space(load_tree(path))
    if not space:
        cfg = from_tree(base)
        recipe_class(cfg.recipe).options(cfg)
        return
    cfg = tune.check_space(base, space)
    tune.check_metric(cfg)
    assert tune.tune_domains(space, cfg.tune.search).keys() == space.keys()


def test_search_kinds_that_do_not_fit_the_search_algorithm_are_refused():
    with pytest.raises(ConfigError, match="listed values"):
        tune.tune_domains({"loss.tv": {"uniform": [0, 1]}}, "grid")
    with pytest.raises(ConfigError, match="choice"):
        tune.tune_domains({"loss.tv": {"grid": [0, 1]}}, "optuna")
    assert tune.tune_domains({"loss.l1": {"choice": [1, 2]}}, "grid") == {"loss.l1": {"grid_search": [1, 2]}}


def test_asha_gets_the_grid_in_a_seeded_random_order_and_trials_see_plain_keys():
    domains = tune.tune_domains({"loss.tv": {"grid": [0.0, 0.1, 10.0]}, "optim.lr_g": {"grid": [1e-4, 1e-3]},
                                 "loss.l1": {"uniform": [50, 150]}}, "random")
    shuffled = tune.shuffled_grid(domains, seed=0)
    assert set(shuffled) == {"loss.l1", tune.GRID_POINT}
    points = shuffled[tune.GRID_POINT]["grid_search"]
    nested = [{"loss.tv": tv, "optim.lr_g": lr} for tv in (0.0, 0.1, 10.0) for lr in (1e-4, 1e-3)]
    assert sorted(points, key=str) == sorted(nested, key=str) and points != nested  # every point once, reordered
    assert points == tune.shuffled_grid(domains, seed=0)[tune.GRID_POINT]["grid_search"]  # seeded
    assert tune.flat_params({"loss.l1": 70.0, tune.GRID_POINT: points[0]}) == {"loss.l1": 70.0, **points[0]}
    assert tune.shuffled_grid({"loss.l1": domains["loss.l1"]}, seed=0) == {"loss.l1": domains["loss.l1"]}


def test_optuna_tpe_suggests_configs_from_our_dimensions_and_paused_trials_free_their_slot():
    space = {"loss.tv": {"loguniform": [1e-5, 1e-3]}, "loss.l1": {"choice": [50.0, 100.0]},
             "train.seed": {"randint": [0, 4]}}
    searcher = tune._search_alg(from_tree({"tune": {"search": "optuna", "seed": 3}}).tune, concurrency=1)
    assert searcher.set_search_properties("val_ssim", "max", tune.tune_domains(space, "optuna"))
    suggestions = [searcher.suggest("t0")]
    assert searcher.suggest("t1") is None  # one running already
    for i in range(1, 4):
        searcher.on_pause(f"t{i - 1}")  # paused at a rung: no longer counts
        suggestions.append(searcher.suggest(f"t{i}"))
    for s in suggestions:
        assert 1e-5 <= s["loss.tv"] <= 1e-3 and s["loss.l1"] in (50.0, 100.0) and 0 <= s["train.seed"] < 4
    assert len({s["loss.tv"] for s in suggestions}) == 4
    searcher.on_unpause("t0")
    assert searcher.suggest("t4") is None


def test_asha_rungs_are_grace_times_powers_of_eta_below_the_last_epoch():
    from ray_ganime.asha import rung_epochs

    assert rung_epochs(1, 3, 6) == [1, 3]
    assert rung_epochs(5, 3, 150) == [5, 15, 45, 135]
    assert rung_epochs(2, 2.5, 20) == [2, 5, 13]  # whole epochs
    assert rung_epochs(1, 1.1, 4) == [1, 2, 3]  # no rung twice
    assert rung_epochs(6, 3, 6) == []  # nothing to compare before the end


class _Trial:
    def __init__(self, trial_id: str, score: float):
        from types import SimpleNamespace

        self.trial_id, self.score, self.status, self.epoch = trial_id, score, "PENDING", 0
        self.run_metadata = SimpleNamespace(last_result={})

    def set_status(self, status: str) -> None:
        self.status = status


class _Controller:
    """What PromotingASHA sees of Tune's controller, running trials one epoch per step."""

    def __init__(self, scores: list[float], concurrency: int):
        from ray_ganime.asha import PausableVariants

        self.todo = [_Trial(f"t{i}", s) for i, s in enumerate(scores)]
        self.trials: list[_Trial] = []
        self.search_alg = PausableVariants(max_concurrent=concurrency)
        self.search_alg.is_finished = lambda: not self.todo

    def get_trials(self):
        return list(self.trials)

    def stop_trial(self, trial):
        trial.status = "TERMINATED"

    def restored(self, scheduler, concurrency: int) -> "_Controller":
        """What `ganime tune --resume` starts from after the driver died here: the same trials (unfinished
        ones PENDING again, as Tune restores them), the searcher's state, a fresh scheduler."""
        restored = _Controller([], concurrency)
        restored.todo, restored.search_alg._live_trials = self.todo, set(self.search_alg._live_trials)
        for trial in self.trials:
            trial.status = "TERMINATED" if trial.status == "TERMINATED" else "PENDING"
            scheduler.on_trial_add(restored, trial)
            restored.trials.append(trial)
        return restored

    def run(self, scheduler, steps: int = 1000) -> None:
        from ray.tune.schedulers import TrialScheduler

        live = self.search_alg._live_trials
        for _ in range(steps):
            while self.todo and len(live) < self.search_alg.max_concurrent:  # the searcher's turn
                self.trials.append(self.todo.pop(0))
                live.add(self.trials[-1].trial_id)
            if (chosen := scheduler.choose_trial_to_run(self)) is not None:
                chosen.status = "PENDING"
            for trial in self.trials:
                trial.status = "RUNNING" if trial.status == "PENDING" else trial.status
            running = [t for t in self.trials if t.status == "RUNNING"]
            assert len(running) <= self.search_alg.max_concurrent
            if not running and all(t.status == "TERMINATED" for t in self.trials) and not self.todo:
                return
            for trial in running:
                trial.epoch += 1
                trial.run_metadata.last_result = {"epoch": trial.epoch, "val_ssim": trial.score}
                decision = scheduler.on_trial_result(self, trial, trial.run_metadata.last_result)
                if trial.epoch == scheduler.max_t:
                    trial.status = "TERMINATED"
                    live.discard(trial.trial_id)
                    scheduler.on_trial_complete(self, trial, {})
                elif decision == TrialScheduler.PAUSE:
                    trial.status = "PAUSED"
        if steps == 1000:
            raise AssertionError("the sweep never ended")


@pytest.mark.parametrize("concurrency", [1, 3])
def test_asha_promotes_the_best_of_each_rung_and_pauses_the_rest(concurrency):
    """Nine trials, rungs at epochs 1 and 3 of 6 (η = 3): every trial runs 1 epoch, the best 3 run to epoch 3,
    the best of those to 6: 9·1 + 3·2 + 1·3 = 18 of the grid's 54 epochs, whatever the arrival order."""
    from ray_ganime.asha import PromotingASHA

    scores = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6]
    scheduler = PromotingASHA("epoch", max_t=6, grace_period=1, reduction_factor=3, max_concurrent=concurrency)
    scheduler.set_search_properties("val_ssim", "max")
    controller = _Controller(scores, concurrency)
    controller.run(scheduler)
    epochs = {t.score: t.epoch for t in controller.trials}
    assert scheduler.rungs == [1, 3]
    assert epochs[0.9] == 6 and sum(epochs.values()) == 18
    assert sorted(e for e in epochs.values() if e > 1) == [3, 3, 6]
    if concurrency == 1:  # one at a time this is synchronous successive halving: the best three go on
        assert {s for s, e in epochs.items() if e >= 3} == {0.9, 0.8, 0.7}


@pytest.mark.parametrize("killed_after", [4, 9, 13])
def test_asha_resumed_after_the_driver_died_continues_where_it_was(killed_after):
    """Killed after some steps (trials paused at rungs, one running between rungs), then restored with a
    fresh scheduler: restored trials wait their turn (never more than the concurrency limit at once), go on
    from their epoch, and the sweep spends what an uninterrupted one does."""
    from ray_ganime.asha import PromotingASHA

    def scheduler():
        s = PromotingASHA("epoch", max_t=6, grace_period=1, reduction_factor=3, max_concurrent=1)
        s.set_search_properties("val_ssim", "max")
        return s

    controller = _Controller([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6], concurrency=1)
    controller.run(scheduler(), steps=killed_after)
    before = {t.trial_id: t.epoch for t in controller.trials}
    restored = controller.restored(resumed := scheduler(), concurrency=1)
    assert not any(t.status == "PENDING" for t in restored.trials if before[t.trial_id] > 0)
    restored.run(resumed)
    epochs = {t.score: t.epoch for t in restored.trials}
    assert all(t.epoch >= before.get(t.trial_id, 0) for t in restored.trials)
    assert epochs[0.9] == 6 and sum(epochs.values()) == 18 and len(epochs) == 9


def test_a_sweep_config_is_not_a_training_config(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"loss": {"tv": {"loguniform": [1e-5, 1e-3]}}}))
    with pytest.raises(ConfigError, match="ganime tune"):
        from_tree(load_tree(path))
    assert main(["train", "--config", str(path)]) == 2
    assert "loss.tv" in capsys.readouterr().err
    assert main(["tune"]) == 2  # neither a config nor --resume
    assert from_tree({"tune": {"metric": "val_fid"}}).tune.resolved_mode() == "min"


def test_an_objective_the_recipe_does_not_report_is_refused_before_ray_starts(tmp_path, capsys):
    import ray

    ray_was_up = ray.is_initialized()
    path = tmp_path / "sweep.yaml"
    for recipe, metric, listed in (("pix2pix", "val_fid_a2b", "val_ssim, val_l1, val_fid"),
                                   ("cyclegan", "val_ssim", "val_fid_a2b, val_fid_b2a, val_fid, val_cycle_l1_a")):
        tree = {**sweep_tree(str(tmp_path), optim={"lr_g": {"grid": [1e-4, 2e-4]}}, tune={"metric": metric}),
                "recipe": recipe}
        path.write_text(yaml.safe_dump(tree))
        assert main(["tune", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"tune.metric={metric!r}: recipe {recipe} does not report it" in err and listed in err
    assert not (tmp_path / "sweeps").exists() and ray.is_initialized() == ray_was_up
    for recipe, metric in (("cyclegan", "val_cycle_l1"), ("cyclegan", "val_fid_b2a"), ("pix2pix", "val_l1")):
        tune.check_metric(from_tree({"recipe": recipe, "tune": {"metric": metric}}))  # reported: accepted


def test_local_mode_trials_hold_the_trainer_and_ray_train_trials_the_driver(ray_session):
    """On the suite's 2-CPU Ray, one CPU kept for Ray Data: local trials of 0.5 CPU fit two at a time."""
    local = from_tree(sweep_tree("unused"))
    on_workers = from_tree(sweep_tree("unused", train={"num_workers": 1}))
    assert tune.trial_resources(local, use_gpu=False) == {"CPU": 0.5}
    assert tune.trial_resources(local, use_gpu=True) == {"CPU": 0.5, "GPU": 1}
    assert tune.trial_resources(on_workers, use_gpu=True) == {"CPU": 0.25}  # its workers take the GPUs
    assert tune.default_concurrency(local, use_gpu=False) == 2
    assert tune.default_concurrency(on_workers, use_gpu=False) == 1  # 0.5 + 0.25 each


def test_resuming_a_sweep_that_does_not_exist_is_a_clear_error(tmp_path, capsys):
    assert main(["tune", "--resume", "nope", "--store", str(tmp_path)]) == 2
    assert "no sweep to resume" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ a real sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_session) -> str:
    root = str(tmp_path_factory.mktemp("tune-store"))
    ensure_synthetic(*DATASET, from_tree({"store": {"uri": root}}))
    return root


@pytest.fixture(scope="module")
def asha_sweep(store) -> dict:
    """4 trials over the TV weight, one at a time, ASHA halving at epochs 1 and 2 of 3. TV 100 smooths the
    output flat, so it scores worst at a rung that already has better trials and is stopped there (tune.seed
    0 shuffles the grid to 1e-2, 0, 1e-4, 100). Over the 60 s budget: six trial launches (two paused trials
    come back), each a process that imports torch and Ray Data; one at a time, since which trial stops early
    depends on the order."""
    tree = sweep_tree(store, loss={"tv": {"grid": [0.0, 1e-4, 1e-2, 100.0]}},
                      tune={"name": f"asha-{uuid.uuid4().hex[:6]}", "scheduler": "asha", "grace_period": 1,
                            "reduction_factor": 2, "max_concurrent_trials": 1})
    started = time.perf_counter()
    out = tune.run(tree)
    print(f"4-trial sweep: {time.perf_counter() - started:.0f} s")
    return out


def test_sweep_runs_every_trial_and_asha_stops_one_early(asha_sweep):
    rows = asha_sweep["trials"]
    assert sorted(r["loss.tv"] for r in rows) == [0.0, 1e-4, 1e-2, 100.0]
    assert all(r["status"] in ("completed", "stopped early") for r in rows)
    early = [r for r in rows if r["status"] == "stopped early"]
    assert early and all(r["epochs"] < 3 for r in early)
    # TV 100 (a flat output) is one that stopped; each stopped at a rung where a trial that went on scored as well
    # or better (TV 1e-4 scores exactly as TV 0 in these few steps: a tie).
    assert 100.0 in {r["loss.tv"] for r in early}
    for r in early:
        score = dict(r["history"])[r["epochs"]]
        assert any(dict(o["history"])[r["epochs"]] >= score for o in rows if o["epochs"] > r["epochs"]), rows
    assert any(r["status"] == "completed" and r["epochs"] == 3 for r in rows)
    for r in rows:  # the objective every epoch, from the trial's own run
        assert [e for e, _ in r["history"]] == list(range(1, r["epochs"] + 1))
        assert all(0 < v < 1 for _, v in r["history"])
    best = asha_sweep["best"]
    assert best["objective"] == max(r["objective"] for r in rows)


def test_results_table_and_plot_list_every_trial(asha_sweep):
    csv = storage.read_bytes(asha_sweep["csv"]).decode().splitlines()
    markdown = storage.read_bytes(asha_sweep["markdown"]).decode()
    assert csv[0].split(",")[:3] == ["trial", "loss.tv", "val_ssim"] and "status" in csv[0]
    assert "val_l1" in csv[0].split(",") and "val_fid" not in csv[0]  # what the runs logged (no FID: off)
    assert len(csv) == 1 + 4
    for r in asha_sweep["trials"]:
        assert sum(line.startswith(r["trial"] + ",") for line in csv) == 1
        assert markdown.count(f"| {r['trial']} |") == 1
    assert "stopped early" in markdown and "completed" in markdown
    # What copying the input scores on the same validation images, once, with the trials' columns.
    header, copy = markdown.splitlines()[4], [line for line in markdown.splitlines() if "baseline: copy" in line]
    assert len(copy) == 1 and copy[0].startswith("| baseline: copy the input |")
    cells = dict(zip(header.strip("|").split(" | "), copy[0].strip("|").split(" | ")))
    assert float(cells["val_ssim"]) == pytest.approx(asha_sweep["trials"][0]["baseline"]["val_ssim"], rel=1e-3)
    plot = images.decode_rgb(storage.read_bytes(asha_sweep["plot"]))
    assert plot.shape[0] > 200 and plot.std() > 10  # a drawn chart, not a blank canvas


def test_best_trial_is_exported_as_a_package_that_loads(asha_sweep, store, capsys):
    assert list(asha_sweep["packages"]) == [""]  # Pix2Pix: one generator, one package named as the sweep
    package = asha_sweep["packages"][""]
    assert package.endswith("/" + asha_sweep["name"])
    generator, meta = export.load_package(package)
    best = asha_sweep["best"]
    assert meta["source_checkpoint"] == best["checkpoint"]
    assert meta["training"]["config"]["loss"]["tv"] == best["loss.tv"]
    assert meta["metrics"]["validation"]["val_ssim"] == pytest.approx(best["objective"])
    assert meta["metrics"]["evaluation"]["fid_backbone"]["random_init"] is True  # the sweep's eval weights
    reference, _ = checkpoints.load_generator(best["checkpoint"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(generator(x), reference(x))
    assert main(["models", "--store", store]) == 0
    assert asha_sweep["name"] in capsys.readouterr().out


# ------------------------------------------------------------------------------------ resume after a kill


def _trial_statuses(sweep: Path) -> dict[str, str]:
    """Trial id -> status, as Tune last saved it (what a resume starts from)."""
    states = sorted(sweep.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    trials = (json.loads(t[0]) for t in data["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def _run_until_killed(tree: dict, name: str, tmp_path: Path, until, signum: int = signal.SIGKILL) -> dict[str, str]:
    """Starts `ganime tune` on ``tree`` as a separate driver, sends ``signum`` to its process group once Tune's
    saved trial statuses satisfy ``until``, and returns those statuses (what a resume starts from). SIGINT (a
    terminal's Ctrl-C): it must exit 130 within 10 s, saying how to resume."""
    import ray

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(tree))
    sweep = Path(tree["store"]["uri"]) / "sweeps" / name
    # The driver joins the session's Ray (as `ray job submit` would), so killing it ends its trials but
    # leaves the cluster.
    # Tune saves its trials' statuses every 10 s or more: every second here, so that the stop comes while some
    # trials are still to run.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "ray_ganime", "tune", str(config), "--name", name],
                                  stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not until(_trial_statuses(sweep)):
            assert driver.poll() is None, f"driver exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the sweep never got there:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        os.killpg(driver.pid, signum)
        if signum == signal.SIGINT:
            assert driver.wait(timeout=10) == 130, log.read_text()[-3000:]
            assert f"resume with: ganime tune --resume {name}\n" in log.read_text(), log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    return _trial_statuses(sweep)


def test_a_killed_sweep_resumes_and_reports_every_trial_once(store, tmp_path):
    """Stopped by Ctrl-C (SIGINT to the driver's group), which ends it at once as a kill would: Tune's own graceful
    stop waited on the trials."""
    name = f"resume-{uuid.uuid4().hex[:6]}"
    tree = sweep_tree(store, loss={"tv": {"grid": [0.0, 1e-3, 1e-1]}},
                      train={"epochs": 2}, tune={"scheduler": "none", "max_concurrent_trials": 2, "export": False})
    sweep = Path(store) / "sweeps" / name
    before = _run_until_killed(tree, name, tmp_path, lambda statuses: "TERMINATED" in statuses.values(),
                               signal.SIGINT)
    finished = [t for t, s in before.items() if s == "TERMINATED"]
    assert len(finished) < 3, "the driver was killed too late to leave anything to resume"
    finished_logs = {t: (sweep / "runs" / t / "metrics.jsonl").stat().st_mtime_ns for t in finished}

    out = tune.run({"store": {"uri": store}}, resume=name)

    rows = out["trials"]
    assert sorted(r["loss.tv"] for r in rows) == [0.0, 1e-3, 1e-1]
    assert len({r["trial"] for r in rows}) == 3 and set(before) <= {r["trial"] for r in rows}
    for r in rows:  # every trial completed, each epoch reported exactly once
        assert r["status"] == "completed" and [e for e, _ in r["history"]] == [1, 2]
    for trial, mtime in finished_logs.items():  # finished trials were not run again
        assert (sweep / "runs" / trial / "metrics.jsonl").stat().st_mtime_ns == mtime
    table = storage.read_bytes(out["csv"]).decode().splitlines()
    assert len(table) == 1 + 3


def test_a_killed_asha_sweep_resumes_its_paused_trials_from_their_rung(store, tmp_path):
    """Over the 60 s budget: the one sweep whose trials run on Ray Train workers, since a trial paused at a rung,
    then the driver killed, must continue its Ray Train run when it comes back; each of its three trial launches
    (two trials, then the promoted one) starts a Ray Train controller and worker group."""
    name = f"resume-asha-{uuid.uuid4().hex[:6]}"
    tree = sweep_tree(store, loss={"tv": {"grid": [0.0, 1e-1]}}, train={"epochs": 2, "num_workers": 1},
                      tune={"scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
                            "max_concurrent_trials": 1, "export": False})
    before = _run_until_killed(tree, name, tmp_path, lambda statuses: "PAUSED" in statuses.values())

    out = tune.run({"store": {"uri": store}}, resume=name)

    rows = out["trials"]
    assert sorted(r["loss.tv"] for r in rows) == [0.0, 1e-1] and set(before) <= {r["trial"] for r in rows}
    # Rung at epoch 1 of 2: both get there, the better one alone runs on; every epoch once.
    assert sorted(r["epochs"] for r in rows) == [1, 2]
    for r in rows:
        assert [e for e, _ in r["history"]] == list(range(1, r["epochs"] + 1))
    first_epoch = {r["trial"]: r["history"][0][1] for r in rows}
    completed = next(r for r in rows if r["status"] == "completed")
    assert first_epoch[completed["trial"]] == max(first_epoch.values())
