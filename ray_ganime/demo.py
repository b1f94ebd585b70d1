"""The main job on the embedded default: everything local, nothing to download, minutes on a laptop.

built-in synthetic anime pairs -> shards in the local store -> Pix2Pix + TV on Ray Train (local Ray)
-> FID / SSIM on the held-out split -> where the checkpoints, metrics and sample grids are.
Its settings are ray_ganime/demo.yaml; --config / --set override them like everywhere else.
"""

from __future__ import annotations

from pathlib import Path

from ray_ganime import config as cfgmod, images, ingest, preview, shards, storage, synth

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def ensure_synthetic(name: str, kind: str, count: int, size: int, cfg: cfgmod.Config, seed: int = 0) -> str:
    """The synthetic data set ``name`` in the store, drawn once and reused by later runs."""
    uri = cfgmod.dataset_uri(name, cfg.store.uri)
    if storage.exists(storage.join(uri, shards.MANIFEST), cfg.store.options()):
        return uri
    rows = synth.examples(kind, count, size, seed)
    ingest.write_examples(rows, count, {"faces": "folder"}.get(kind, kind), uri, seed=seed, test_fraction=0.2,
                          store_options=cfg.store.options(),
                          info={"source": "synthetic", "synth": {"kind": kind, "count": count, "size": size, "seed": seed}})
    return uri


def main(args) -> None:
    from ray_ganime import evaluate, train

    tree = cfgmod.load_tree(DEMO_CONFIG)
    if args.config:
        tree = {**tree, **cfgmod.load_tree(args.config)}
    for text in list(args.overrides) + ([f"store.uri={args.store}"] if args.store else []):
        cfgmod.set_path(tree, *cfgmod.parse_override(text))
    cfg = cfgmod.from_tree(tree)

    print(f"store: {cfg.store.uri}")
    size = cfg.data.crop_size
    uri = ensure_synthetic(f"synthetic-paired-{args.count}x{size}", "paired", args.count, size, cfg)
    manifest = shards.read_manifest(uri, cfg.store.options())
    rows = shards.read_rows(uri, limit=16, options=cfg.store.options())
    sheet = storage.join(uri, "contact_sheet.png")
    storage.write_bytes(sheet, images.encode_png(preview.contact_sheet(rows, manifest["image_columns"])),
                        cfg.store.options())
    print(f"data set: {uri}  (contact sheet: {sheet})\n{shards.describe(manifest)}\n")

    cfg.data.uri = uri
    out = train.fit(cfg)
    results, files = evaluate.evaluate_checkpoint(out["checkpoint"], cfg, uri, storage.join(out["run"], "eval"))
    reports = ", ".join(dict.fromkeys(f["metrics"] for f in files.values()))
    print(f"\nrun folder:   {out['run']}\ncheckpoint:   {out['checkpoint']}\n"
          f"samples:      {storage.join(out['run'], 'samples')}\n"
          f"metrics:      {storage.join(out['run'], 'metrics.jsonl')} (per epoch), {reports}\n"
          f"tensorboard:  tensorboard --logdir {storage.join(out['run'], 'tensorboard')}\n"
          + "\n".join(evaluate.summary_lines(results, files)))
