"""CycleGAN's image pool: fill, then swap about half; pass-through at capacity 0; exact resume; private RNG."""

from __future__ import annotations

import pytest
import torch

from ray_ganime.pool import ImagePool


def _batch(start: int, n: int = 1) -> torch.Tensor:
    # Image i is filled with the value i, so every returned image says which query it came from.
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()


def _ids(images: torch.Tensor) -> list[int]:
    return [int(v) for v in images[:, 0, 0, 0]]


def _run(pool: ImagePool, start: int, queries: int, batch: int = 3) -> list[int]:
    out = []
    for q in range(queries):
        out += _ids(pool.query(_batch(start + q * batch, batch)))
    return out


def test_fills_then_swaps_about_half():
    pool = ImagePool(capacity=10, seed=1)
    # Filling: 4 batches of 3 -> the first 10 images come back as they are; the pool then holds them all.
    first = _run(pool, 0, 3)
    assert first == list(range(9)) and len(pool) == 9
    out = _ids(pool.query(_batch(9, 3)))
    assert out[0] == 9 and len(pool) == 10
    # Full: each image is either itself or one stored earlier (and never returned twice from the pool).
    n, swapped, seen_from_pool = 3000, 0, set()
    outputs = _run(pool, 12, n // 3)
    for i, got in enumerate(outputs, start=12):
        if got != i:
            assert got < i and got not in seen_from_pool
            seen_from_pool.add(got)
            swapped += 1
    assert 0.45 < swapped / n < 0.55  # Binomial(3000, 0.5): 0.45 and 0.55 are 5.5 standard deviations out
    # Every image is in exactly one place: returned from the pool, still stored, or never stored.
    stored = _ids(torch.stack(pool.images))
    assert len(stored) == 10 and not set(stored) & seen_from_pool


def test_capacity_zero_passes_through():
    pool = ImagePool(capacity=0)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    for _ in range(5):
        y = pool.query(x)
        assert torch.equal(y, x) and not y.requires_grad
    assert len(pool) == 0 and pool.state_dict()["images"] == []


def test_returns_detached_images_of_the_input_dtype_and_stores_copies():
    pool = ImagePool(capacity=2)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = pool.query(x)
    assert not y.requires_grad and torch.equal(y, x)
    with torch.no_grad():
        x.zero_()  # the caller reusing its buffer does not change what the pool holds
    assert all(image.abs().sum() > 0 for image in pool.images)
    half = pool.query(torch.randn(8, 3, 4, 4).to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.shape == (8, 3, 4, 4)
    with pytest.raises(ValueError, match="capacity"):
        ImagePool(capacity=-1)


def test_state_round_trip_answers_like_an_uninterrupted_pool():
    torch.manual_seed(0)
    batches = [torch.randn(3, 3, 4, 4) for _ in range(40)]
    uninterrupted = ImagePool(capacity=7, seed=3)
    expected = [uninterrupted.query(b) for b in batches]

    first = ImagePool(capacity=7, seed=3)
    got = [first.query(b) for b in batches[:15]]
    state = first.state_dict()
    assert all(image.device.type == "cpu" for image in state["images"])
    resumed = ImagePool(capacity=7, seed=999)  # another seed: the state, not the constructor, decides
    resumed.load_state_dict(state)
    got += [resumed.query(b) for b in batches[15:]]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    # And it is the state that does it: a fresh pool with the same seed diverges once the pool is full.
    fresh = ImagePool(capacity=7, seed=3)
    assert not all(torch.equal(fresh.query(b), e) for b, e in zip(batches[15:], expected[15:]))


def test_state_round_trips_through_torch_save_weights_only(tmp_path):
    pool = ImagePool(capacity=4, seed=5)
    pool.query(torch.randn(6, 3, 4, 4))
    torch.save(pool.state_dict(), tmp_path / "pool.pt")
    restored = ImagePool(capacity=4, seed=0)
    restored.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))
    x = torch.randn(20, 3, 4, 4)
    assert torch.equal(restored.query(x), pool.query(x))
    with pytest.raises(ValueError, match="capacity 4, this pool 5"):
        ImagePool(capacity=5).load_state_dict(pool.state_dict())


def test_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    pool = ImagePool(capacity=2, seed=0)
    for k in range(20):
        pool.query(_batch(3 * k, 3))
    assert torch.equal(torch.get_rng_state(), before)
    # Nor does the global RNG steer the pool: the same seed answers the same under any global seed.
    answers = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        answers.append(_run(ImagePool(capacity=2, seed=0), 0, 20))
    assert answers[0] == answers[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_stay_on_their_device_and_state_moves_to_cpu():
    pool = ImagePool(capacity=3, seed=0)
    ref = ImagePool(capacity=3, seed=0)
    batches = [torch.randn(2, 3, 4, 4) for _ in range(10)]
    for b in batches[:5]:
        y = pool.query(b.cuda())
        assert y.is_cuda and torch.equal(y.cpu(), ref.query(b))
    assert all(image.is_cuda for image in pool.images)
    state = pool.state_dict()
    assert all(image.device.type == "cpu" for image in state["images"])
    resumed = ImagePool(capacity=3)
    resumed.load_state_dict(state)
    for b in batches[5:]:
        y = resumed.query(b.cuda())
        assert y.is_cuda and torch.equal(y.cpu(), ref.query(b))
