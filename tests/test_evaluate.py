"""Held-out evaluation through Ray Data: SSIM/FID values, the random-init label, the report, the row count,
and that the Ray path computes exactly what a plain loop on the driver computes; for an unpaired direction
(two domains, FID only) too, and a CycleGAN checkpoint's report of both its directions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pathlib import Path

from ray_ganime import evaluate, images, metrics, preview, shards, storage, train, transforms
from ray_ganime.config import DataConfig, load_config
from ray_ganime.data import DecodeStage, ShardData
from ray_ganime.recipes import Direction, recipe_class

pytestmark = [pytest.mark.ray,
              pytest.mark.filterwarnings("ignore:FID computed from only:UserWarning"),
              pytest.mark.filterwarnings("ignore:RANDOM-INIT INCEPTION:UserWarning")]
SIZE = 32
N_TEST = 8  # each image costs two Inception-v3 passes at 299 px on the CPU: keep the split small
PAIRED = Direction("G", source="sketch", target="color", paired=True)  # Pix2Pix's
A2B = Direction("G_A", source="A", target="B", paired=False)  # CycleGAN's
N_A, N_B = 6, 5  # test images per domain of the unpaired set: unequal, as domains are


def _image(i: int) -> np.ndarray:
    """Smooth random blobs plus a little noise: structure for SSIM, variety for the features."""
    rng = np.random.default_rng(i)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    smooth = transforms.resize(coarse, SIZE, "bicubic").astype(np.int16)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_session) -> ShardData:
    """A paired data set whose colour image IS the sketch: N_TEST test rows, 2 train rows."""
    uri = str(tmp_path_factory.mktemp("eval") / "same-pairs")
    with shards.ShardWriter(uri, "paired") as w:
        for i in range(N_TEST + 2):
            png = images.encode_png(_image(i))
            w.write({"id": f"e{i:03d}", "split": "test" if i < N_TEST else "train", "width": SIZE,
                     "height": SIZE, "source": "test", "sketch": png, "color": png})
    cfg = DataConfig(load_size=SIZE, crop_size=SIZE, map_batch_size=4, batch_size=4, seed=0)
    return ShardData(uri, cfg)


def gray_generator() -> nn.Module:
    conv = nn.Conv2d(3, 3, 1)  # all-zero weights: 0 in [-1, 1], i.e. uint8 gray 128 everywhere
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def random_generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())


# Where the fact is not the actor pool: evaluate in the test process (test_ray_path_matches_a_plain_loop shows
# it computes what the actors do; the CycleGAN checkpoint test runs unpaired directions on an actor).
IN_PROCESS = 0
MAX_IMAGES = 5  # the identity run is limited, to check max_images without another (slow) run
_RESULTS: dict[str, tuple[dict, list[str]]] = {}


def run(data: ShardData, name: str) -> tuple[dict, list[str]]:
    """(result, warning messages): each generator is evaluated once per module, several tests look at it."""
    if name not in _RESULTS:
        generator = {"identity": nn.Identity, "gray": gray_generator}[name]()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate.evaluate_generator(generator, data, PAIRED, fid_weights="random", batch_size=8,
                                                 max_images=MAX_IMAGES if name == "identity" else None,
                                                 concurrency=IN_PROCESS)
        _RESULTS[name] = result, [str(w.message) for w in caught]
    return _RESULTS[name]


def test_identity_generator_is_perfect(data):
    (same, _), (gray, _) = run(data, "identity"), run(data, "gray")
    assert same["split"] == "test"
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["ssim_std"] < 1e-6
    # Identical feature sets. The random-init backbone's features are tiny (its FIDs are not on the
    # usual scale), so "about zero" is measured against the FID of a bad generator on the same images.
    assert gray["fid"] > 0
    assert abs(same["fid"]) < 1e-6 * gray["fid"]
    assert len(same["samples"]) == min(MAX_IMAGES, evaluate.MAX_SAMPLES)
    for inp, out, target in same["samples"]:
        assert inp.dtype == np.uint8 and inp.shape == (SIZE, SIZE, 3)
        assert np.array_equal(inp, out) and np.array_equal(out, target)


def test_max_images_limits_the_count(data):
    (limited, messages), (full, _) = run(data, "identity"), run(data, "gray")
    assert full["num_images"] == N_TEST and limited["num_images"] == MAX_IMAGES < N_TEST
    assert any(f"FID computed from only {MAX_IMAGES} images" in m for m in messages)
    assert any(m.startswith("RANDOM-INIT INCEPTION") for m in messages)
    with pytest.raises(ValueError, match="columns"):
        evaluate.evaluate_generator(nn.Identity(), data, Direction("G", "image", "color", True), fid_weights="random")
    with pytest.raises(ValueError, match="max_images"):
        evaluate.evaluate_generator(nn.Identity(), data, PAIRED, max_images=1, fid_weights="random")


def test_gray_generator_scores_worse(data):
    (same, _), (gray, _) = run(data, "identity"), run(data, "gray")
    assert gray["num_images"] == N_TEST
    assert gray["ssim"] < 0.5 and gray["ssim"] < same["ssim"] - 0.5
    assert gray["fid"] > 1e6 * max(abs(same["fid"]), 1e-300)
    _, out, target = gray["samples"][0]
    assert (out == 128).all() and not np.array_equal(out, target)


def test_random_init_label_and_report_files(data, tmp_path):
    result, _ = run(data, "gray")
    assert result["fid_backbone"]["random_init"] is True
    assert result["fid_warning"] == "RANDOM-INIT INCEPTION: not a real FID"

    files = evaluate.write_report(result, str(tmp_path / "eval"), "Pix2Pix + TV", extra={"checkpoint": "ck/x"})
    assert set(files) == {"metrics", "markdown", "samples"}
    record = json.loads(storage.read_bytes(files["metrics"]))
    assert "samples" not in record
    assert record["model"] == "Pix2Pix + TV" and record["checkpoint"] == "ck/x" and record["created"]
    assert record["fid"] == result["fid"] and record["ssim"] == result["ssim"]
    assert record["num_images"] == N_TEST and record["fid_backbone"]["random_init"] is True
    assert record["fid_warning"] == result["fid_warning"]

    lines = storage.read_bytes(files["markdown"]).decode().splitlines()
    assert lines[0] == "| model | FID | SSIM |"
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row[0] == "Pix2Pix + TV" and "random-init Inception: not comparable" in row[1]
    assert float(row[1].split()[0]) == pytest.approx(result["fid"], rel=1e-3)
    assert float(row[2]) == pytest.approx(result["ssim"], abs=5e-4)

    sheet = images.decode_rgb(storage.read_bytes(files["samples"]))
    tile, pad, n = preview.sample_tile_size(SIZE), 4, len(result["samples"])
    assert sheet.shape == (n * (tile + pad) + pad, 3 * (tile + pad) + pad, 3)


def test_baselines_are_scored_like_a_model_and_kept_beside_the_manifest(data, tmp_path, monkeypatch):
    """On this set the colour image IS the sketch, so copying the input is perfect: a model is read against that,
    the training mean image and two halves of the real images, and one that does not beat copying is said so."""
    gray, _ = run(data, "gray")
    options = dict(fid_weights="random", batch_size=8, concurrency=IN_PROCESS, baselines=True)
    scored = evaluate.evaluate_generator(gray_generator(), data, PAIRED, **options)
    assert {k: v for k, v in scored.items() if k not in ("baselines", "samples")} == \
        {k: v for k, v in gray.items() if k != "samples"}  # the model's own scores, unchanged
    base = scored["baselines"]
    copy, mean, floor = base["copy_input"], base["mean_image"], base["real_vs_real"]
    assert copy["ssim"] == pytest.approx(1.0, abs=1e-6) and abs(copy["fid"]) < 1e-6 * mean["fid"]
    assert mean["ssim"] < 0.9 and floor["num_images"] == N_TEST and floor["fid"] > 0
    assert base["fid_backbone"] == gray["fid_backbone"]
    train_images = data.decoded("train", ["color"], 2)["color"].astype(np.float64)
    np.testing.assert_allclose(evaluate._mean_image(data, PAIRED), train_images.mean(axis=0))
    # Kept beside the manifest, read back rather than scored again; another max_images is another record.
    assert len(list(Path(data.uri, "baselines").iterdir())) == 1
    with monkeypatch.context() as m:
        m.setattr(evaluate, "_trivial_jobs", lambda *a: pytest.fail("baselines scored again") if a[1] else {})
        assert evaluate.evaluate_generator(gray_generator(), data, PAIRED, **options)["baselines"] == base
    assert evaluate.evaluate_generator(gray_generator(), data, PAIRED, max_images=4, **options)["baselines"] != base
    assert len(list(Path(data.uri, "baselines").iterdir())) == 2

    files = evaluate.write_report({**gray, "baselines": base}, str(tmp_path / "eval"), "Gray")
    lines = storage.read_bytes(files["markdown"]).decode().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:6]] == [
        "Gray", "baseline: copy the input", "baseline: the training set's mean image",
        "baseline: real vs real (two halves of the held-out targets)"]
    assert float(lines[3].split("|")[3]) == pytest.approx(1.0, abs=5e-4)
    assert lines[6] == "" and lines[7] == "**Gray does not beat copying its input on FID and SSIM.**"
    assert json.loads(storage.read_bytes(files["metrics"]))["baselines"] == base
    summary = evaluate.summary_lines({"": {**gray, "baselines": base, "model": "Gray"}}, {"": files})
    assert summary[1].startswith("  baselines: copy the input FID ") and " SSIM 1.0000; " in summary[1]
    assert summary[2] == "WARNING: Gray does not beat copying its input on FID and SSIM"


def sample_space_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two (n, D) feature sets of equal n in closed form, independent of metrics/evaluate:
    tr sqrt(S1 S2) is the nuclear norm of A B^T / (n - 1), A and B the centred rows. Exact, and O(n^2 D)
    instead of two 2048 x 2048 eigen-decompositions (tens of seconds on a busy 2-core machine)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    ca, cb = a - a.mean(0), b - b.mean(0)
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2)
                 + (np.sum(ca * ca) + np.sum(cb * cb) - 2 * np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / (n - 1))


@pytest.mark.parametrize("n, dim", [(7, 64), (90, 16)])  # fewer rows than dimensions (low-rank path), and more
def test_streamed_statistics_and_fid_equal_the_plain_formula(n, dim):
    rng = np.random.default_rng(n)
    a = rng.normal(3.0, 1.0, (n, dim)) * rng.uniform(0.1, 2.0, dim)
    b = rng.normal(3.2, 1.5, (n, dim))
    fake, real = metrics.moments_pair(dim)
    for lo in range(0, n, 4):  # batches of 4, the last one partial
        fake.add(a[lo:lo + 4].astype(np.float32))
        real.add(b[lo:lo + 4].astype(np.float32))
    a, b = a.astype(np.float32), b.astype(np.float32)
    assert (fake.rows is None) == (2 * n - 1 >= dim)
    for moments, rows in ((fake, a), (real, b)):
        mu, sigma = metrics.feature_statistics(rows)
        np.testing.assert_allclose(moments.statistics()[0], mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(moments.statistics()[1], sigma, rtol=1e-9, atol=1e-12)
    direct = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
    exact = sample_space_fid(a, b)  # the direct formula adds ~1e-8 relative of round-off when S is singular
    assert metrics.fid_of_moments(fake, real) == pytest.approx(exact, rel=1e-10)
    assert metrics.fid_of_moments(fake, real) == pytest.approx(direct, rel=1e-6)
    assert abs(metrics.fid_of_moments(fake, fake)) < 1e-9 * exact


@pytest.mark.parametrize("actors", [1, IN_PROCESS])
def test_ray_path_matches_a_plain_loop(data, actors):
    """FID and SSIM from a Ray actor, and in the calling process (eval.actors 0), equal those computed on the
    driver from the same rows without Ray: nothing lost, nothing counted twice, the same decode and
    quantisation; the caller's generator is left in training mode."""
    generator = random_generator()
    result = evaluate.evaluate_generator(generator, data, PAIRED, fid_weights="random", batch_size=5,  # uneven batches
                                         concurrency=actors)
    assert generator.training and all(p.requires_grad for p in generator.parameters())

    rows = shards.read_rows(data.uri, split="test")
    stage = DecodeStage(data.columns, data.cfg.crop_size, data.cfg.interpolation)
    decoded = stage({c: np.array([r[c] for r in rows], dtype=object) for c in ("id", *data.columns)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inception, ident = metrics.load_fid_inception("random")
    with torch.inference_mode():
        fake = transforms.to_uint8(generator.eval()(transforms.to_tensor(decoded["sketch"])))
        real = decoded["color"]
        feats = [inception(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).double().numpy()
                 for x in (fake, real)]
    # The Fréchet distance of the two feature sets, in closed form (test_streamed_statistics_and_fid_...
    # ties it to metrics.frechet_distance; calling that here would cost two 2048^2 eigh on a busy CPU).
    expected_fid = sample_space_fid(*feats)

    assert result["num_images"] == len(rows) == N_TEST
    assert result["fid_backbone"] == ident
    assert result["fid"] == pytest.approx(expected_fid, rel=1e-6)
    ssim = metrics.ssim(fake, real)
    assert result["ssim"] == pytest.approx(float(ssim.mean()), abs=1e-12)
    assert result["ssim_std"] == pytest.approx(float(ssim.std()), abs=1e-12)


# ------------------------------------------------------------------------------------------ unpaired


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory, ray_session) -> ShardData:
    """Two domains: A the blobs, B their negatives (another distribution); N_A / N_B test rows, 2 train rows
    each."""
    uri = str(tmp_path_factory.mktemp("eval") / "domains")
    with shards.ShardWriter(uri, "unpaired") as w:
        for domain, n, draw in (("A", N_A, _image), ("B", N_B, lambda i: 255 - _image(100 + i))):
            for i in range(n + 2):
                w.write({"id": f"{domain}{i:03d}", "split": "test" if i < n else "train", "domain": domain,
                         "width": SIZE, "height": SIZE, "source": "test", "image": images.encode_png(draw(i))})
    cfg = DataConfig(load_size=SIZE, crop_size=SIZE, map_batch_size=4, batch_size=4, seed=0)
    return ShardData(uri, cfg)


def test_unpaired_direction_is_fid_of_generated_source_against_real_target(unpaired):
    """Identity A -> B: the FID of the A images against the B images, as computed by hand from their
    Inception features; no SSIM (nothing pairs an A with a B)."""
    result = evaluate.evaluate_generator(nn.Identity(), unpaired, A2B, fid_weights="random", batch_size=4,
                                         concurrency=IN_PROCESS)

    decoded = unpaired.decoded("test", ["A", "B"], 100)  # without Ray: every test image of each domain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inception, ident = metrics.load_fid_inception("random")
    feats = {k: metrics.inception_features(inception, v, "cpu") for k, v in decoded.items()}
    expected = metrics.fid_from_features(feats["A"], feats["B"], warn=False)

    assert len(decoded["A"]) == N_A and len(decoded["B"]) == N_B
    assert result["num_images"] == N_A and result["num_real"] == N_B
    assert result["split"] == "test" and result["fid_backbone"] == ident
    assert (result["source"], result["target"]) == ("A", "B")
    assert expected > 0 and result["fid"] == pytest.approx(expected, rel=1e-6)
    assert "ssim" not in result and "ssim_std" not in result
    assert len(result["samples"]) == N_A
    for row in result["samples"]:  # input | output, no target
        assert len(row) == 2 and row[0].shape == (SIZE, SIZE, 3) and np.array_equal(row[0], row[1])
    assert any(np.array_equal(result["samples"][0][0], a) for a in decoded["A"])


def test_a_paired_direction_across_domains_is_refused(unpaired):
    with pytest.raises(ValueError, match="different domains"):
        evaluate.evaluate_generator(nn.Identity(), unpaired, Direction("G", "A", "B", True), fid_weights="random")
    with pytest.raises(ValueError, match="domains"):  # a paired set's names on an unpaired set
        evaluate.evaluate_generator(nn.Identity(), unpaired, PAIRED, fid_weights="random")


def _cyclegan_checkpoint(folder: Path, data_uri: str) -> str:
    cfg = load_config(None, ["recipe=cyclegan", "model.ngf=8", "model.ndf=8", "model.n_blocks=2",
                             f"data.load_size={SIZE}", f"data.crop_size={SIZE}", f"data.uri={data_uri}"])
    torch.manual_seed(0)
    recipe = recipe_class("cyclegan")(cfg, "cpu")
    folder.mkdir(parents=True)
    train.save_checkpoint(folder, recipe, cfg, epoch=2, global_step=4, metrics={"epoch": 2})
    return str(folder)


def test_cyclegan_checkpoint_reports_every_direction(unpaired, tmp_path):
    ckpt = _cyclegan_checkpoint(tmp_path / "run" / "checkpoint_epoch_0002", unpaired.uri)
    cfg = load_config(None, ["eval.fid_weights=random", "eval.batch_size=4"])
    results, files = evaluate.evaluate_checkpoint(ckpt, cfg)

    out = Path(ckpt + "_eval")
    assert set(results) == set(files) == {"a2b", "b2a"}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "a2b/metrics.json", "a2b/samples.png", "b2a/metrics.json", "b2a/samples.png", "results.md"]
    for direction, (source, target, n, n_real) in {"a2b": ("A", "B", N_A, N_B), "b2a": ("B", "A", N_B, N_A)}.items():
        result = results[direction]
        assert result["model"] == f"CycleGAN {direction}" and "ssim" not in result
        assert (result["source"], result["target"]) == (source, target)
        assert (result["num_images"], result["num_real"]) == (n, n_real)
        assert result["fid"] > 0 and result["fid_warning"] == evaluate.RANDOM_INIT_WARNING
        record = json.loads((out / direction / "metrics.json").read_text())
        assert record["direction"] == direction and record["model"] == f"CycleGAN {direction}"
        assert record["checkpoint"] == ckpt and record["epoch"] == 2 and record["fid"] == result["fid"]
        assert "ssim" not in record and "samples" not in record
        assert files[direction] == {"metrics": str(out / direction / "metrics.json"),
                                    "markdown": str(out / "results.md"),
                                    "samples": str(out / direction / "samples.png")}
        sheet = images.decode_rgb((out / direction / "samples.png").read_bytes())
        tile, pad = preview.sample_tile_size(SIZE), 4
        assert sheet.shape == (n * (tile + pad) + pad, 2 * (tile + pad) + pad, 3)  # input | output per line

    lines = (out / "results.md").read_text().splitlines()
    assert lines[:2] == ["| model | FID | SSIM |", "|---|---|---|"]
    table = [line for line in lines if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    kinds = ["copy the input", "the training set's mean image", "real vs real (two halves of the held-out targets)"]
    assert [r[0] for r in rows] == [name for d in ("a2b", "b2a")
                                    for name in (f"CycleGAN {d}", *(f"CycleGAN {d} baseline: {k}" for k in kinds))]
    assert all(r[2] == "-" for r in rows)  # unpaired: no SSIM
    for row, direction in zip(rows[::4], ("a2b", "b2a")):
        assert "random-init Inception: not comparable" in row[1]
        assert float(row[1].split()[0]) == pytest.approx(results[direction]["fid"], rel=1e-3)
        assert set(results[direction]["baselines"]) == {"copy_input", "mean_image", "real_vs_real", "fid_backbone"}
    text = "\n".join(lines)
    assert lines[len(table)] == ""
    assert f"\nCycleGAN a2b: {N_A} images generated from 'A' against {N_B} real 'B'" in text
    assert f"\nCycleGAN b2a: {N_B} images generated from 'B' against {N_A} real 'A'" in text
    assert text.count("RANDOM-INIT INCEPTION") == 1

    summary = evaluate.summary_lines(results, files)
    assert summary[0].startswith("CycleGAN a2b: FID") and "SSIM" not in summary[0]
    assert sum(line.startswith("markdown:") for line in summary) == 1
