"""batching.Batcher, the Generators replicas' request batching, on a bare asyncio loop (no Ray)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ray_ganime.batching import Batcher


class Model:
    """A stand-in forward pass that records every batch it runs, then waits for its ``gate`` to open (or takes
    ``seconds``): while it is closed, a test can queue requests behind a running batch however slow the box."""

    def __init__(self, seconds: float = 0.0, fail_on: object = None, gated: bool = False) -> None:
        self.seconds, self.fail_on, self.batches = seconds, fail_on, []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def __call__(self, key, items: list) -> list:
        self.batches.append((key, list(items)))
        await self.gate.wait()
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [(key, item) for item in items]

    async def running(self, n: int = 1) -> None:
        """Until ``n`` batches have started."""
        while len(self.batches) < n:
            await asyncio.sleep(0)


def test_requests_that_queue_while_a_batch_runs_all_go_into_the_next_batch():
    # The property @serve.batch lost: 15 requests arrive a little apart (each gap twice the batcher's wait) while
    # the first forward runs; the next batch must take all of them, not chop them into batches of whatever
    # arrived within the wait of each other.
    async def burst():
        model = Model(gated=True)
        batcher = Batcher(model, max_batch_size=16, wait_s=0.005)
        first = asyncio.ensure_future(batcher("m", 0))
        await model.running()
        rest = []
        for i in range(1, 16):
            rest.append(asyncio.ensure_future(batcher("m", i)))
            await asyncio.sleep(0.01)
        model.gate.set()
        return [await first, *await asyncio.gather(*rest)], model.batches

    answers, batches = asyncio.run(burst())
    assert answers == [("m", i) for i in range(16)]
    assert [len(items) for _, items in batches] == [1, 15]


def test_a_lone_request_waits_at_most_the_wait_and_a_full_batch_not_at_all():
    async def timed(max_batch_size: int, wait_s: float, n: int) -> float:
        batcher = Batcher(Model(seconds=0), max_batch_size, wait_s)
        started = time.perf_counter()
        await asyncio.gather(*(batcher("m", i) for i in range(n)))
        return time.perf_counter() - started

    assert 0.2 <= asyncio.run(timed(8, 0.2, 1)) < 1.0  # waited for company that never came, then ran
    assert asyncio.run(timed(4, 5.0, 4)) < 1.0  # full at once: no wait


def test_batches_hold_one_model_up_to_the_max_and_models_take_turns_oldest_first():
    async def mixed():
        model = Model(gated=True)
        batcher = Batcher(model, max_batch_size=3, wait_s=0.0)
        blocker = asyncio.ensure_future(batcher("a", "first"))  # occupies the replica while the rest queue
        await model.running()
        calls = [asyncio.ensure_future(batcher(key, f"{key}{i}")) for i, key in enumerate("abbbbab")]
        await asyncio.sleep(0)  # all queued
        model.gate.set()
        return [await blocker, *await asyncio.gather(*calls)], model

    answers, model = asyncio.run(mixed())
    assert answers[0] == ("a", "first") and answers[1:] == [(key, f"{key}{i}") for i, key in enumerate("abbbbab")]
    assert model.batches == [("a", ["first"]), ("a", ["a0", "a5"]), ("b", ["b1", "b2", "b3"]), ("b", ["b4", "b6"])]


def test_a_failing_batch_fails_its_own_requests_only_and_cancelled_requests_are_skipped():
    async def scenario():
        model = Model(fail_on="bad", gated=True)
        batcher = Batcher(model, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher("m", "bad"))
        await model.running()
        gone = asyncio.ensure_future(batcher("m", "gone"))
        kept = asyncio.ensure_future(batcher("m", "kept"))
        await asyncio.sleep(0)  # both queued
        gone.cancel()  # the client hung up while queued
        model.gate.set()
        with pytest.raises(ValueError, match="bad item"):
            await first
        return (await kept, await batcher("m", "after")), model

    answers, model = asyncio.run(scenario())
    assert answers == (("m", "kept"), ("m", "after"))
    assert [items for _, items in model.batches] == [["bad"], ["kept"], ["after"]]


def test_a_run_that_answers_the_wrong_number_of_items_is_an_error_not_a_hang():
    async def short(key, items):
        return items[:-1]

    async def call():
        batcher = Batcher(short, max_batch_size=4, wait_s=0.0)
        return await asyncio.gather(batcher("m", 1), batcher("m", 2), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) and "answered 1 of a batch of 2" in str(r) for r in asyncio.run(call()))
    with pytest.raises(ValueError):
        Batcher(short, max_batch_size=0, wait_s=0.0)
