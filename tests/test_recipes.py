"""The recipe contract, checked for every registered recipe (a new one passes it without editing this file),
the engine's rules for the three kinds of network, and the package's import layering.

No Ray here. Per recipe: sizes on the meta device, one CPU training step, an exact state round trip through
``torch.save`` / ``torch.load(weights_only=True)``, export -> load bitwise per direction, and the
Validator's metric names. Nets are tiny (``TINY``) and images 32 px.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import assert_states_equal, saved_and_loaded, snapshot
from torch import nn

import ray_ganime
from ray_ganime import export, train
from ray_ganime.config import ConfigError, load_config
from ray_ganime.data import ShardData
from ray_ganime.demo import ensure_synthetic
from ray_ganime.recipes import RECIPES, Direction, Recipe, register

SIZE = 32
# Only to make nets tiny (and CycleGAN's image pools small enough to fill and swap within 3 steps of 2 images).
# An init phase of one epoch (AnimeGAN, CartoonGAN), so that the tests step through both phases.
PHOTO2CARTOON = ["model.ndf=8", "optim.init_epochs=1", "loss.vgg_weights=random"]
TINY = {"pix2pix": ["model.ngf=8", "model.ndf=8"],
        "cyclegan": ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "loss.pool_size=2"],
        "cartoongan": [*PHOTO2CARTOON, "model.ngf=8", "model.n_blocks=1"],
        "animegan": PHOTO2CARTOON, "animeganv2": PHOTO2CARTOON}
# Trainable parameters at the default 256 px config, as junyanz/pytorch-CycleGAN-and-pix2pix prints them.
CANONICAL_SIZES = {"pix2pix": {"G": 54_413_955, "D": 2_768_705},
                   "cyclegan": {"G_A": 11_378_179, "G_B": 11_378_179, "D_A": 2_764_737, "D_B": 2_764_737},
                   # G: the released AnimeGANv2 generator (animegan2-pytorch); D: the TF code's D_net(ch 64, n_dis 3)
                   "animeganv2": {"G": 2_143_552, "D": 1_128_800}}
# The data set kind of ray_ganime.demo.ensure_synthetic for a recipe's task.
SYNTH_KIND = {"paired": "paired", "unpaired": "unpaired", "folder": "faces"}

NAMES = sorted(RECIPES)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread, as a Ray train worker with under 2 CPUs runs (Ray sets OMP_NUM_THREADS=1). On a
    shared 2-core machine two OpenMP threads per tiny op contend: CycleGAN steps at 32 px took 8-16 s, not 0.2 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cfg(name: str, *overrides: str):
    return load_config(None, [f"recipe={name}", *TINY.get(name, []), f"data.load_size={SIZE + 4}",
                              f"data.crop_size={SIZE}", *overrides])


def build(name: str, *overrides: str, seed: int = 0) -> Recipe:
    torch.manual_seed(seed)
    return RECIPES[name](make_cfg(name, *overrides), "cpu")


def phases(recipe: Recipe) -> list[int]:
    """An epoch of each training phase: the init phase's first and the one after it, or epoch 0."""
    init = recipe.cfg.optim.init_epochs
    return [0, init] if init else [0]


def optimised_nets(recipe: Recipe) -> list[str]:
    """The nets whose parameters an optimiser updates (G, D; not an EMA copy)."""
    ids = {id(p) for o in recipe.optimizers.values() for g in o.param_groups for p in g["params"]}
    return [k for k, net in recipe.nets.items() if any(id(p) in ids for p in net.parameters())]


# ------------------------------------------------------------------------------------ per recipe


@pytest.mark.parametrize("name", NAMES)
def test_network_sizes_on_the_meta_device(name):
    cfg = load_config(None, [f"recipe={name}"])  # the default 256 px config
    sizes = RECIPES[name].network_sizes(cfg)
    assert sizes and all(n > 0 for n in sizes.values()), sizes
    if name in CANONICAL_SIZES:
        assert sizes == CANONICAL_SIZES[name]


@pytest.mark.parametrize("name", NAMES)
def test_one_train_step_updates_every_optimised_net(name):
    recipe = build(name)
    before = snapshot(recipe)
    for epoch in phases(recipe):  # a step of each phase (an init phase trains G alone)
        recipe.epoch = epoch
        losses = recipe.train_step(recipe.example_batch(2))
        assert losses
        for k, v in losses.items():
            assert isinstance(v, torch.Tensor) and v.ndim == 0, (k, v)
            assert not v.requires_grad and v.grad_fn is None, f"{k} is not detached"
            assert torch.isfinite(v), (k, v)
    trained = optimised_nets(recipe)
    assert trained, "no network has an optimiser"
    after = snapshot(recipe)
    for k in trained:
        moved = [n for n in before[k] if not torch.equal(before[k][n], after[k][n])]
        assert moved, f"{k} did not change in a training step"


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_gives_bit_identical_next_step(name):
    batch = build(name).example_batch(2, seed=1)
    recipe = build(name)
    # With an init phase: a step inside it, saved, then the step right after it (the G and D optimisers' first).
    init = recipe.cfg.optim.init_epochs
    for _ in range(1 if init else 2):
        recipe.train_step(batch)
    recipe.epoch = init
    saved = saved_and_loaded({"recipe": recipe.state_dict(), "rank": recipe.rank_state()})

    # Another torch seed and train.seed: every weight and (pool) generator must come from the saved state.
    fresh = build(name, "train.seed=7", seed=1)
    fresh.load_state_dict(saved["recipe"])
    fresh.load_rank_state(saved["rank"])
    fresh.epoch = recipe.epoch  # as the engine sets it
    steps = []
    for r in (recipe, fresh):
        torch.manual_seed(123)  # the engine restores torch's RNG (dropout) itself: train.rank_state
        steps.append(r.train_step(batch))
    assert_states_equal(steps[0], steps[1], "losses")
    assert_states_equal(recipe.state_dict(), fresh.state_dict(), "state")
    assert_states_equal(recipe.rank_state(), fresh.rank_state(), "rank_state")

    if saved["rank"]:  # per-rank state (image pools) matters: without it the next step differs
        without = build(name, "train.seed=7", seed=1)
        without.load_state_dict(saved["recipe"])
        without.epoch = recipe.epoch
        torch.manual_seed(123)
        other = without.train_step(batch)
        assert any(not torch.equal(other[k], steps[0][k]) for k in other), "rank_state made no difference"


@pytest.mark.parametrize("name", NAMES)
def test_export_then_load_is_bitwise_per_direction(name, tmp_path):
    recipe = build(name)
    recipe.train_step(recipe.example_batch(2))  # batch-norm statistics away from their initial values
    directions = recipe.directions()
    assert directions
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    for key, d in directions.items():
        spec = recipe.generator_spec(key)
        assert spec["native_size"] == SIZE
        package = export.write_package(recipe.generator(key), spec, f"{name}-{key}" if key else name,
                                       str(tmp_path), recipe=name)
        model, meta = export.load_package(package)
        assert meta["input"]["column"] == d.source and meta["output"]["column"] == d.target
        with torch.no_grad():
            want = recipe.generator(key).eval()(x)
            got = model(x)
        assert got.shape == want.shape == x.shape
        assert torch.equal(got, want), f"direction {key!r}: max |diff| {(got - want).abs().max().item()}"


@pytest.mark.parametrize("name", NAMES)
def test_metric_names_cover_what_the_validator_reports(name, tmp_path):
    cls = RECIPES[name]
    kind = SYNTH_KIND[cls.task]
    cfg = make_cfg(name, f"store.uri={tmp_path}", "eval.val_fid=true", "eval.fid_weights=random",
                   "eval.val_images=4", "eval.batch_size=4")
    cfg.data.uri = ensure_synthetic(f"synthetic-{kind}-40x{SIZE}", kind, 40, SIZE, cfg)
    torch.manual_seed(0)
    recipe = cls(cfg, "cpu")
    validate = train.Validator(ShardData.from_config(cfg), cfg, recipe, torch.device("cpu"))
    rng = torch.get_rng_state()
    scores = validate()
    assert torch.equal(torch.get_rng_state(), rng), "the Validator drew from torch's RNG"
    assert all(net.training for net in recipe.nets.values()), "the Validator left a net in eval mode"
    assert scores["val_images"] == 4
    reported = {k for k, v in scores.items() if k.startswith("val_") and isinstance(v, (int, float))
                and k not in ("val_images", "val_split", "val_fid_backbone")}
    # With eval.val_fid on, what metric_names() promises is exactly what an epoch reports (a sweep's metric
    # is checked against metric_names before it starts).
    assert reported == set(recipe.metric_names()), (sorted(reported), recipe.metric_names())
    assert set(recipe.unbuilt(cfg).metric_names()) == reported


# ------------------------------------------------------------------------------------ engine rules


class Tagged(nn.Module):
    """What the engine's DDP wrapper stands in for here: a module around a net."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.module = net

    def forward(self, x):
        return self.module(x)


class TinyContract(Recipe):
    """A frozen net (a perceptual loss's), an EMA copy of G (in ``nets``, no optimiser), G and D."""

    name = "tiny-contract"
    task = "paired"

    def directions(self):
        return {"": Direction("G", "sketch", "color", paired=True)}

    def build_nets(self):
        return {"G": nn.Conv2d(3, 3, 3, padding=1), "D": nn.Conv2d(6, 1, 3), "G_ema": nn.Conv2d(3, 3, 3, padding=1)}

    def build_frozen(self):
        return {"features": nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5))}

    def build_optimizers(self):
        o = self.cfg.optim
        return {k: torch.optim.Adam(self.nets[k].parameters(), lr=o.lr_g) for k in ("G", "D")}


@pytest.fixture
def tiny_contract():
    register(TinyContract)
    yield TinyContract
    del RECIPES[TinyContract.name]  # parametrised tests elsewhere see only the real recipes


def test_engine_wraps_checkpoints_and_freezes_by_kind(tiny_contract):
    torch.manual_seed(0)
    recipe = tiny_contract(load_config(None, ["recipe=tiny-contract"]), "cpu")
    frozen = recipe.frozen["features"]
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())

    recipe.wrap(Tagged)
    assert {k for k, v in recipe.train_nets.items() if isinstance(v, Tagged)} == {"G", "D"}
    assert recipe.train_nets["G"].module is recipe.nets["G"]
    assert recipe.train_nets["G_ema"] is recipe.nets["G_ema"]
    assert "features" not in recipe.train_nets

    state = recipe.state_dict()
    assert set(state["nets"]) == {"G", "D", "G_ema"} and set(state["optimizers"]) == {"G", "D"}
    assert all(".module." not in k and not k.startswith("module.") for v in state["nets"].values() for k in v)


# Stepping schedulers without a training step between is the point here, not a mistake.
no_step_warning = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")


def lr_factors(recipe: Recipe, epochs: int) -> list[float]:
    """LR / initial LR of every optimiser over ``epochs`` epochs (each must agree)."""
    base = recipe.learning_rates()
    out = []
    for _ in range(epochs):
        now = recipe.learning_rates()
        factors = {k: now[k] / base[k] for k in now}
        assert len(set(factors.values())) == 1, factors
        out.append(next(iter(factors.values())))
        recipe.end_epoch()
    return out


@no_step_warning
def test_step_schedule_drops_the_lr_after_its_milestones(tiny_contract):
    cfg = load_config(None, ["recipe=tiny-contract", "optim.schedule=step", "optim.step_epochs=[2]"])
    assert lr_factors(tiny_contract(cfg, "cpu"), 3) == pytest.approx([1.0, 1.0, 0.1], rel=1e-12)
    with pytest.raises(ConfigError, match="step_epochs"):
        load_config(None, ["recipe=tiny-contract", "optim.schedule=step"])


@no_step_warning
def test_linear_decay_is_unchanged_for_pix2pix():
    recipe = build("pix2pix", "train.epochs=4", "optim.decay_epochs=2")
    assert lr_factors(recipe, 4) == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3], rel=1e-12)


@no_step_warning
def test_a_run_shorter_than_its_decay_starts_at_the_full_lr():
    """CycleGAN's config decays over 100 epochs; `--set train.epochs=3` used to start at 1 - 98/101 of the LR."""
    recipe = build("pix2pix", "train.epochs=3", "optim.decay_epochs=100")
    assert [recipe.lr_rule()(e) for e in range(3)] == pytest.approx([3 / 4, 2 / 4, 1 / 4], rel=1e-12)
    assert recipe.learning_rates() == pytest.approx({"lr_G": 2e-4 * 3 / 4, "lr_D": 2e-4 * 3 / 4}, rel=1e-12)


# ------------------------------------------------------------------------------------ precision and kernels


def test_precision_rule_bf16_only_on_cuda_from_the_threshold_batch():
    from ray_ganime.recipes.base import AUTOCAST_MIN_BATCH, autocast_dtype

    bf16, big, small = torch.bfloat16, AUTOCAST_MIN_BATCH, AUTOCAST_MIN_BATCH - 1
    assert autocast_dtype("cuda", "auto", big, bf16_supported=True) is bf16
    assert autocast_dtype("cuda", "auto", 32, bf16_supported=True) is bf16
    assert autocast_dtype("cuda", "auto", small, bf16_supported=True) is None  # batch 1: float32 is faster
    assert autocast_dtype("cuda", "auto", 1, bf16_supported=True) is None
    assert autocast_dtype("cuda", "auto", 32, bf16_supported=False) is None  # no bf16 units: float32
    assert autocast_dtype("cpu", "auto", 32) is None and autocast_dtype("cpu", "auto", 1) is None
    assert autocast_dtype("cuda", "float32", 32, bf16_supported=True) is None
    assert autocast_dtype("cuda", "bfloat16", 1, bf16_supported=True) is bf16
    assert autocast_dtype("cpu", "bfloat16", 1) is bf16  # asked for explicitly
    with pytest.raises(ValueError, match="fp16"):
        autocast_dtype("cuda", "fp16", 32)


def test_precision_config_and_the_old_amp_switch():
    assert build("pix2pix").amp_dtype is None  # CPU default: float32, as before
    assert build("pix2pix", "train.precision=bfloat16").amp_dtype is torch.bfloat16
    assert make_cfg("pix2pix", "train.amp=false").train.precision == "float32"
    assert make_cfg("pix2pix", "train.amp=true").train.precision == "auto"
    with pytest.raises(ConfigError, match="train.precision"):
        make_cfg("pix2pix", "train.precision=fp16")


def test_cpu_adam_is_foreach_and_bitwise_the_default_loop():
    """foreach on CPU (fused is for CUDA) must leave CPU training bitwise as it was (exact resume, determinism)."""
    recipe = build("pix2pix")
    for opt in recipe.optimizers.values():
        assert [(g["foreach"], g["fused"]) for g in opt.param_groups] == [(True, False)]
    reference = build("pix2pix")
    reference.optimizers = {k: torch.optim.Adam(reference.nets[k].parameters(), lr=2e-4, betas=(0.5, 0.999))
                            for k in ("G", "D")}  # PyTorch's default per-tensor loop on CPU
    batch = recipe.example_batch(2, seed=3)
    for r in (recipe, reference):
        torch.manual_seed(5)
        r.train_step(batch)
        r.train_step(batch)
    assert_states_equal(snapshot(recipe), snapshot(reference))


def test_a_checkpoint_from_a_fused_optimiser_resumes_with_this_devices_kernels():
    recipe = build("pix2pix")
    recipe.train_step(recipe.example_batch(2))
    state = saved_and_loaded(recipe.state_dict())
    for opt in state["optimizers"].values():  # as a CUDA run writes it
        for g in opt["param_groups"]:
            g.update(fused=True, foreach=False)
    fresh = build("pix2pix", seed=1)
    fresh.load_state_dict(state)
    for opt in fresh.optimizers.values():
        assert [(g["foreach"], g["fused"]) for g in opt.param_groups] == [(True, False)]
    batch = recipe.example_batch(2, seed=1)
    steps = []
    for r in (recipe, fresh):
        torch.manual_seed(9)
        steps.append(r.train_step(batch))
    assert_states_equal(steps[0], steps[1], "losses")


def test_example_batch_is_contiguous_nchw_on_cpu():
    batch = build("pix2pix").example_batch(2)
    assert batch["sketch"].shape == (2, 3, SIZE, SIZE) and batch["sketch"].is_contiguous()


# ------------------------------------------------------------------------------------ layering

PACKAGE = Path(ray_ganime.__file__).parent
RAY_FREE = ("ray_ganime.nets", "ray_ganime.losses", "ray_ganime.metrics", "ray_ganime.recipes",
            "ray_ganime.pool", "ray_ganime.checkpoints", "ray_ganime.export")


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``module`` imports anywhere in its file (top level, functions, ``__import__("x")``);
    ``from pkg import name`` counts as pkg.name where that is a module of ours, else as pkg."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[:len(package) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                out.add(node.args[0].value)
    return out


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> our modules it imports, module -> everything it imports)."""
    modules = module_files()
    everything = {m: imported_names(m, p, modules) for m, p in modules.items()}
    ours = {m: {i for i in names if i in modules and i != m} for m, names in everything.items()}
    return ours, everything


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_the_import_graph_sees_function_level_and_dynamic_imports():
    ours, everything = import_graph()
    assert "ray_ganime.storage" in ours["ray_ganime.checkpoints"]  # inside a function
    assert {"ray.train", "ray.train.torch"} <= everything["ray_ganime.train"]
    assert "ray_ganime.nets.layers" in ours["ray_ganime.nets.unet"]  # relative or absolute, resolved
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_our_modules():
    ours, _ = import_graph()
    assert cycles(ours) == []


def test_nets_losses_metrics_recipes_checkpoints_export_never_import_ray():
    ours, everything = import_graph()
    for top in RAY_FREE:
        starts = [m for m in ours if m == top or m.startswith(top + ".")]
        assert starts, top
        for start in starts:
            for m in reachable(ours, start):
                rays = sorted(i for i in everything[m] if i == "ray" or i.startswith("ray."))
                assert not rays, f"{start} imports {m}, which imports {rays}"


def test_importing_the_ray_free_modules_loads_no_ray():
    code = f"import sys; import {', '.join(RAY_FREE)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
