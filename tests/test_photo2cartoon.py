"""The photo -> cartoon recipes (CartoonGAN, AnimeGAN v1 and v2) without Ray: the init phase, exact resume inside
it, learning on tiny synthetic data, the anime-side views and which VGG weights a result used.

tests/test_recipes.py holds the contract every recipe passes (a step of each phase, the state round trip across
the init phase's end, export); tests/test_photo2cartoon_e2e.py the same recipes through Ray, the CLI and Serve.
"""

from __future__ import annotations

import pytest
import torch
from runs import assert_states_equal, saved_and_loaded, snapshot

from ray_ganime.config import ConfigError, load_config
from ray_ganime.data import ShardData
from ray_ganime.demo import ensure_synthetic
from ray_ganime.recipes import RECIPES
from ray_ganime.transforms import to_tensor

SIZE = 32
TINY = {"cartoongan": ["model.ngf=16", "model.n_blocks=2", "model.ndf=8"], "animegan": ["model.ndf=8"],
        "animeganv2": ["model.ndf=8"]}
NAMES = sorted(TINY)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cfg(name: str, *overrides: str, store: str | None = None):
    return load_config(None, [f"recipe={name}", *TINY[name], f"data.load_size={SIZE}", f"data.crop_size={SIZE}",
                              "optim.init_epochs=2", "loss.vgg_weights=random",
                              *([f"store.uri={store}"] if store else []), *overrides])


def build(name: str, *overrides: str, seed: int = 0, store: str | None = None):
    torch.manual_seed(seed)
    return RECIPES[name](make_cfg(name, *overrides, store=store), "cpu")


@pytest.mark.parametrize("name", NAMES)
def test_the_init_phase_trains_the_generator_alone_with_its_own_optimiser(name):
    recipe = build(name)
    batch = recipe.example_batch(2)
    before = snapshot(recipe)
    losses = recipe.train_step(batch)
    assert set(losses) == {"loss_G_init", "G_content"}
    after = snapshot(recipe)
    assert_states_equal(before["D"], after["D"], "D")
    assert any(not torch.equal(before["G"][k], after["G"][k]) for k in before["G"])
    assert recipe.optimizers["G_init"].state and not recipe.optimizers["G"].state and not recipe.optimizers["D"].state

    recipe.epoch = 2  # the init phase is over: adversarial training with the G and D optimisers
    init_state = saved_and_loaded(recipe.optimizers["G_init"].state_dict())
    losses = recipe.train_step(batch)
    assert {"loss_G", "loss_D", "G_adv", "G_content", "D_real", "D_fake"} <= set(losses)
    assert recipe.optimizers["G"].state and recipe.optimizers["D"].state
    assert_states_equal(init_state, recipe.optimizers["G_init"].state_dict(), "G_init")


def test_loss_terms_follow_the_papers():
    cartoon = build("cartoongan")
    cartoon.epoch = 2
    assert {"D_edge"} <= set(cartoon.train_step(cartoon.example_batch(2)))  # edge-smoothed cartoons are fake
    for name, tv in (("animegan", False), ("animeganv2", True)):
        recipe = build(name)
        recipe.epoch = 2
        terms = recipe.train_step(recipe.example_batch(2))
        assert {"D_gray", "D_smooth", "G_gram", "G_color"} <= set(terms)
        assert ("G_tv" in terms) is tv  # v2 adds total variation
        assert all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("name", ["animeganv2"])
def test_a_resume_inside_the_init_phase_continues_exactly(name):
    batch = build(name).example_batch(2, seed=1)
    epochs = [0, 1, 1, 2, 2]  # two init epochs, then adversarial
    straight = build(name)
    for epoch in epochs:
        straight.epoch = epoch
        straight.train_step(batch)

    first = build(name)
    for epoch in epochs[:2]:
        first.epoch = epoch
        first.train_step(batch)
    saved = saved_and_loaded(first.state_dict())
    resumed = build(name, "train.seed=3", seed=7)
    resumed.load_state_dict(saved)
    for epoch in epochs[2:]:
        resumed.epoch = epoch
        resumed.train_step(batch)
    assert_states_equal(straight.state_dict(), resumed.state_dict(), "state")


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory) -> ShardData:
    store = str(tmp_path_factory.mktemp("p2c"))
    cfg = make_cfg("animeganv2", "data.views={B: [gray, smooth_gray, smooth]}", store=store)
    cfg.data.uri = ensure_synthetic(f"synthetic-unpaired-60x{SIZE}", "unpaired", 60, SIZE, cfg)
    return ShardData.from_config(cfg)


def images(data: ShardData, split: str, names: list[str], n: int) -> dict[str, torch.Tensor]:
    return {k: to_tensor(v) for k, v in data.decoded(split, names, n).items()}


@pytest.mark.parametrize("name", NAMES)
def test_the_init_phase_learns_to_keep_the_photos_content(name, unpaired):
    """Content-only training on a few synthetic photos: the held-out photos' VGG content error and YUV colour
    error both fall by a clear margin (random VGG features here: no weights on this machine)."""
    recipe = build(name, "optim.init_epochs=100", "optim.lr_init=1e-3")
    train = images(unpaired, "train", recipe.batch_names(), 48)
    n = min(len(v) for v in train.values())
    held_out = images(unpaired, "test", ["A"], 12)["A"]

    def scores() -> dict[str, float]:
        return recipe.validation_extras({"": held_out}, {"": recipe.run_generator("G", held_out)})

    start = scores()
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        rows = torch.randint(0, n, (4,), generator=g)
        recipe.global_step = step
        recipe.train_step({k: v[rows] for k, v in train.items()})
    end = scores()
    assert end["val_color"] < 0.7 * start["val_color"], (start, end)
    assert end["val_content"] < 0.7 * start["val_content"], (start, end)


def test_anime_views_are_derived_for_the_anime_domain_only(unpaired):
    assert unpaired.views("A") == {}
    assert unpaired.views("B") == {"image": ["gray", "smooth_gray", "smooth"]}
    assert unpaired.locate("B_smooth_gray") == ("B", "image_smooth_gray")
    with pytest.raises(ValueError, match=r"data.views \{A: \[gray\]\}"):
        unpaired.locate("A_gray")
    views = unpaired.decoded("train", ["B", "B_gray"], 2)
    gray = views["B_gray"]
    assert (gray[..., 0] == gray[..., 1]).all() and not (views["B"][..., 0] == views["B"][..., 1]).all()


def test_only_recipes_with_an_init_phase_take_one():
    with pytest.raises(ConfigError, match="pix2pix has no init phase"):
        RECIPES["pix2pix"].unbuilt(load_config(None, ["recipe=pix2pix", "optim.init_epochs=2"]))


def test_which_vgg_weights_trained_it_is_recorded():
    recipe = build("cartoongan")
    assert recipe.pretrained["vgg"]["random_init"] is True and "RANDOM" in recipe.pretrained["vgg"]["name"]
    bare = RECIPES["cartoongan"](make_cfg("cartoongan"), "cpu", frozen=False)  # export and serving need no VGG
    assert bare.frozen == {} and bare.pretrained == {}
