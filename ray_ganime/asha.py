"""Asynchronous successive halving by promotion (ASHA as in Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning", Algorithm 2), as a Ray Tune scheduler.

Ray's own ``ASHAScheduler`` is the stopping variant: at a rung a trial goes on unless it falls below the
top 1/η of the trials that reached that rung before it. The first trials to reach a rung have nobody to
lose to, so with few trials at a time (a sweep of 9 on one GPU) it stops little: 28 of 54 epochs in
bench/tune_efficiency.py. The paper's promotion variant instead pauses every trial at every rung and
promotes from a rung the best of its trials that are not yet promoted, as soon as the rung holds η
trials per promotion. With one trial at a time this is synchronous successive halving; with many, the
paper's asynchronous algorithm. Freed slots go to promotions first, then to new trials.

A paused trial is a stopped Tune actor; it resumes from its Ray Train run's checkpoint at the rung
(``tune.run_trial`` checkpoints every rung), so a pause costs one Train start-up, not the epochs.

Concurrency counts running trials only: the search algorithm gets ``on_pause`` / ``on_unpause`` so a paused
trial makes room for a new one (``PausableVariants``, ``PausableLimit``).
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Epochs at which trials are compared: grace, grace·η, grace·η², ... below max_t."""
    rungs, k = [], 0
    while (epoch := math.ceil(grace_period * reduction_factor ** k)) < max_t:
        if not rungs or epoch > rungs[-1]:
            rungs.append(epoch)
        k += 1
    return rungs


class PromotingASHA(TrialScheduler):
    def __init__(self, time_attr: str, max_t: int, grace_period: int, reduction_factor: float,
                 max_concurrent: int, metric: str | None = None, mode: str | None = None):
        super().__init__()
        self.time_attr, self.max_t, self.reduction_factor = time_attr, max_t, reduction_factor
        self.max_concurrent = max_concurrent
        self.rungs = rung_epochs(grace_period, reduction_factor, max_t)
        self.scores: list[dict[str, float]] = [{} for _ in self.rungs]  # trial id -> score (higher is better)
        self.promoted: list[set[str]] = [set() for _ in self.rungs]
        self.resuming: set[str] = set()  # paused trials promoted into a slot they already hold
        self.unfinished: list[str] = []  # restored trials that were between rungs: resumed when there is room
        self._metric, self._mode = metric, mode

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    # ------------------------------------------------------------------------ decisions

    def _promotable(self, rung: int) -> list[str]:
        """Trial ids that rung ``rung`` may promote now, best first: its top ⌊n/η⌋ not yet promoted."""
        ranked = sorted(self.scores[rung], key=self.scores[rung].get, reverse=True)
        return [t for t in ranked[: int(len(ranked) / self.reduction_factor)] if t not in self.promoted[rung]]

    def _paused_promotion(self, trials: list[Trial]) -> Trial | None:
        """The paused trial to resume next (highest rung first), marked as promoted."""
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED}
        for rung in reversed(range(len(self.rungs))):
            for trial_id in self._promotable(rung):
                if trial_id in paused and trial_id not in self.resuming:
                    self.promoted[rung].add(trial_id)
                    return paused[trial_id]
        return None

    def _score(self, value: float) -> float:
        return value if self._mode == "max" else -value

    def on_trial_result(self, controller, trial: Trial, result: dict) -> str:
        epoch, value = result.get(self.time_attr), result.get(self._metric)
        if epoch is None or value is None or epoch >= self.max_t:
            return TrialScheduler.CONTINUE
        score = self._score(value)
        # Every rung this report passes (a trial resumed by `ganime tune --resume` may skip one).
        reached = [k for k, r in enumerate(self.rungs) if epoch >= r and trial.trial_id not in self.scores[k]]
        if not reached:
            return TrialScheduler.CONTINUE
        for k in reached:
            self.scores[k][trial.trial_id] = score
        rung = reached[-1]
        if trial.trial_id in self._promotable(rung):
            self.promoted[rung].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        _slots(controller).on_pause(trial.trial_id)
        promotion = self._paused_promotion(controller.get_trials())
        if promotion is not None:  # it takes this trial's slot before the searcher can fill it
            _slots(controller).on_unpause(promotion.trial_id)
            self.resuming.add(promotion.trial_id)
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, controller) -> Trial | None:
        trials = controller.get_trials()
        for trial in trials:
            if trial.trial_id in self.resuming and trial.status == Trial.PAUSED:
                self.resuming.discard(trial.trial_id)
                return trial
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        active = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials) + len(self.resuming)
        if active < self.max_concurrent:
            paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED}
            self.unfinished = [t for t in self.unfinished if t in paused]
            chosen = self._paused_promotion(trials) or (paused[self.unfinished.pop(0)] if self.unfinished else None)
            if chosen is not None:
                _slots(controller).on_unpause(chosen.trial_id)
                return chosen
        if active == 0 and controller.search_alg.is_finished():
            # Nothing runs, nothing is left to start and no rung can promote: the paused trials end here.
            for trial in trials:
                if trial.status == Trial.PAUSED:
                    controller.stop_trial(trial)
        return None

    def on_trial_add(self, controller, trial: Trial) -> None:
        """Trials restored by ``ganime tune --resume`` bring back their place on the rungs: Tune keeps only a
        trial's last result, which stands for every rung it reached, and it counts as promoted past the rungs
        below its epoch. An unfinished one that had reported waits PAUSED for its turn (Tune would start every
        restored trial at once): from its rung, to be promoted, or, if it was between rungs, for room."""
        last = trial.run_metadata.last_result or {}
        epoch, value = last.get(self.time_attr), last.get(self._metric)
        if epoch is None or value is None:
            return  # a new trial
        reached = [k for k, r in enumerate(self.rungs) if epoch >= r]
        for k in reached:
            self.scores[k][trial.trial_id] = self._score(value)
            if epoch > self.rungs[k]:
                self.promoted[k].add(trial.trial_id)
        if trial.status != Trial.PENDING or epoch >= self.max_t:
            return
        if not reached or epoch > self.rungs[reached[-1]]:
            self.unfinished.append(trial.trial_id)
        trial.set_status(Trial.PAUSED)  # before Tune files it by status
        _slots(controller).on_pause(trial.trial_id)

    def on_trial_error(self, controller, trial: Trial) -> None:
        self.resuming.discard(trial.trial_id)

    def on_trial_complete(self, controller, trial: Trial, result: dict) -> None:
        self.resuming.discard(trial.trial_id)

    def on_trial_remove(self, controller, trial: Trial) -> None:
        self.resuming.discard(trial.trial_id)

    def debug_string(self) -> str:
        counts = ", ".join(f"epoch {r}: {len(s)} ({len(p)} promoted)"
                           for r, s, p in zip(self.rungs, self.scores, self.promoted))
        return f"PromotingASHA rungs: {counts}"


def _slots(controller) -> Any:
    """The object that counts running trials against the concurrency limit."""
    search_alg = controller.search_alg
    return getattr(search_alg, "searcher", search_alg)


class PausableVariants(BasicVariantGenerator):
    """Tune's grid/random generator, with paused trials not counted against ``max_concurrent``."""

    def on_pause(self, trial_id: str) -> None:
        self._live_trials.discard(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self._live_trials.add(trial_id)


class PausableLimit(Searcher):
    """At most ``max_concurrent`` running trials for a searcher (Optuna); paused ones do not count.
    (Tune's ConcurrencyLimiter counts them, so trials paused at rungs would block the sweep.)"""

    def __init__(self, searcher: Searcher, max_concurrent: int):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.max_concurrent, self.running = searcher, max_concurrent, set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if len(self.running) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.running.add(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.discard(trial_id)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def on_pause(self, trial_id: str) -> None:
        self.running.discard(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.running.add(trial_id)

    def get_state(self) -> dict:
        return {"running": set(self.running)}

    def set_state(self, state: dict) -> None:
        self.running = state["running"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
