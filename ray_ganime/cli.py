"""The `ganime` command line (also `python -m ray_ganime`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ray_ganime import config as cfgmod, storage

SYNTH_KIND_TO_SHARDS = {"paired": "paired", "unpaired": "unpaired", "faces": "folder"}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.crop_size=64 (repeatable)")
    p.add_argument("--store", help="store root URI (local folder or s3://bucket/prefix); default $GANIME_STORE")
    _verbose_arg(p)


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own output too (its workers' logs, Ray Train's and Ray Data's lines)")


def _overrides(args, **options) -> list[str]:
    """--set values, then --store and the given command options as config keys (those not given: left out)."""
    given = {"store.uri": getattr(args, "store", None), **options}
    return list(args.overrides) + [f"{key}={value}" for key, value in given.items() if value]


def _load(args) -> cfgmod.Config:
    return cfgmod.load_config(args.config, _overrides(args))


def cmd_synth(args) -> None:
    from ray_ganime import ingest, synth

    cfg = _load(args)
    dest = cfgmod.dataset_uri(args.out, cfg.store.uri)
    rows = synth.examples(args.kind, args.count, args.size, args.seed, workers=args.workers)
    info = {"source": "synthetic", "synth": {"kind": args.kind, "count": args.count, "size": args.size,
                                             "seed": args.seed, "test_fraction": args.test_fraction}}
    manifest = ingest.write_examples(rows, args.count, SYNTH_KIND_TO_SHARDS[args.kind], dest, seed=args.seed,
                                     test_fraction=args.test_fraction, shard_mb=args.shard_mb,
                                     store_options=cfg.store.options(), info=info)
    _print_manifest(dest, manifest)


def cmd_ingest(args) -> None:
    from ray_ganime import ingest

    cfg = _load(args)
    dest = cfgmod.dataset_uri(args.dest, cfg.store.uri)
    opts = ingest.IngestOptions(test_fraction=args.test_fraction, seed=args.seed, color_side=args.color_side,
                                a_is=args.a_is, max_side=args.max_side, shard_mb=args.shard_mb, workers=args.workers)
    manifest = ingest.ingest(args.layout, args.src, dest, opts, store_options=cfg.store.options())
    _print_manifest(dest, manifest)


def cmd_inspect(args) -> None:
    from ray_ganime import images, preview, shards

    cfg = _load(args)
    uri = cfgmod.dataset_uri(args.uri, cfg.store.uri)
    manifest = shards.read_manifest(uri, cfg.store.options())
    print(f"{uri}\n{shards.describe(manifest)}")
    rows = shards.read_rows(uri, limit=args.samples, options=cfg.store.options())
    sheet = preview.contact_sheet(rows, manifest["image_columns"])
    out = Path(args.out or f"contact_sheet-{Path(uri.rstrip('/')).name}.png").resolve()
    out.write_bytes(images.encode_png(sheet))
    print(f"contact sheet ({len(rows)} examples): {out}")


def _until_signal(work, stopped) -> object:
    """``work()``, stopped by the first SIGINT / SIGTERM (Ctrl-C, a group's signal, `ray job stop`): then the Ray
    it started and all that Ray started are stopped, ``stopped()`` says where things are, and the process exits
    at once with 128 + the signal (130, 143)."""
    from ray_ganime import lease, runtime

    own_ray = os.environ.get("RAY_ADDRESS", "local") == "local"
    if own_ray:
        runtime.make_stoppable()
    try:
        return runtime.until_signal(work)
    except runtime.Stopped as stop:
        try:
            print(f"\nganime: stopping ({stop})...", file=sys.stderr, flush=True)
            if own_ray:
                runtime.stop_own_ray()
            print(f"ganime: stopped. {stopped()}", file=sys.stderr, flush=True)
        finally:
            lease.release_all()  # last: a training thread of this process may still be writing until the exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + stop.signum)


def _save_ray_logs(uri: str | None, cfg: cfgmod.Config) -> None:
    from ray_ganime import runtime

    if uri is None:
        return
    try:
        runtime.save_ray_logs(uri, cfg.store.options())
    except storage.StorageError as e:  # the run's own error, if any, matters more
        print(f"ganime: warning: Ray's logs were not saved to {uri}: {e}", file=sys.stderr)


def _resume_command(argv: list[str], option: str = "", value: str = "") -> str:
    """The ganime command line of ``argv``, with ``option value`` added unless ``argv`` has the option."""
    import shlex

    given = not option or any(a == option or a.startswith(option + "=") for a in argv)
    return shlex.join(["ganime", *argv, *(() if given else (option, value))])


def cmd_train(args) -> None:
    from ray_ganime import checkpoints, train

    cfg = _load(args)
    if args.resume_from:
        cfg.train.resume_from = args.resume_from
    if args.run_name:
        cfg.train.run_name = storage.check_name(args.run_name, "run name")  # one line, not pydantic's report
    cfg.train.run_name = train.run_name(cfg)  # known before a signal stops the run, to say how to resume it
    run = train.default_run_uri(cfg, cfg.train.run_name)

    import ray

    # Ray's logs go to the run folder when the run starts its own Ray (a cluster keeps them: `ray logs`).
    logs = None if ray.is_initialized() or os.environ.get("RAY_ADDRESS") else storage.join(run, "logs")

    def stopped() -> str:
        _save_ray_logs(logs, cfg)
        newest = checkpoints.newest_valid(run, cfg.store.options())
        where = (f"last complete checkpoint: {newest.uri} (epoch {newest.meta['epoch']})" if newest.uri
                 else "no checkpoint was complete")
        return f"{where}\nresume with: {_resume_command(args.argv, '--run-name', cfg.train.run_name)}"

    try:
        out = _until_signal(lambda: train.fit(cfg), stopped)
    finally:
        _save_ray_logs(logs, cfg)
    print(f"\nrun:         {out['run']}\ncheckpoint:  {out['checkpoint']}\n"
          f"samples:     {storage.join(out['run'], 'samples')}\ntensorboard: {storage.join(out['run'], 'tensorboard')}"
          + (f"\nray logs:    {logs}" if logs else ""))
    if args.evaluate and out["checkpoint"]:
        _evaluate(cfg, out["checkpoint"], cfg.dataset_uri(), storage.join(out["run"], "eval"))


def cmd_evaluate(args) -> None:
    cfg = _load(args)
    data_uri = cfgmod.dataset_uri(args.data, cfg.store.uri) if args.data else None
    _evaluate(cfg, args.model, data_uri, args.out)


def _evaluate(cfg: cfgmod.Config, model_uri: str, data_uri: str | None, out_uri: str | None) -> dict:
    """Evaluate every generator of a checkpoint on a data set's held-out split; writes metrics, a table, samples.
    Returns {direction: result}."""
    from ray_ganime import evaluate

    results, files = evaluate.evaluate_checkpoint(model_uri, cfg, data_uri, out_uri)
    print("\n" + "\n".join(evaluate.summary_lines(results, files)))
    return results


def cmd_tune(args) -> None:
    from ray_ganime import tune

    if bool(args.config) == bool(args.resume):
        raise cfgmod.ConfigError("give a sweep config (ganime tune CONFIG) or --resume NAME, not both")
    tree = cfgmod.load_tree(args.config, _overrides(args, **{"tune.name": args.name}))
    if not args.resume and not (tree.get("tune") or {}).get("name"):  # named now, to say how to resume it
        tree["tune"] = {**(tree.get("tune") or {}), "name": tune.new_name(tree)}
    name = args.resume or tree["tune"]["name"]
    resume = ["tune", "--resume", name, *(["--store", args.store] if args.store else [])]
    out = _until_signal(lambda: tune.run(tree, resume=args.resume),
                        lambda: f"resume with: {_resume_command(resume)}")
    print(f"\nsweep:    {out['sweep']}  ({len(out['trials'])} trials; resume with --resume {out['name']})")
    for key in ("markdown", "csv", "plot"):
        print(f"{key + ':':<9} {out[key]}")
    best = out["best"]
    print(f"best:     {best['trial']} {out['metric']} {best['objective']:.4g} "
          f"({', '.join(f'{k}={v}' for k, v in best.items() if '.' in k)}), checkpoint {best['checkpoint']}")
    for uri in (out.get("packages") or {}).values():
        print(f"package:  {uri}")


def cmd_demo(args) -> None:
    from ray_ganime import demo

    _until_signal(lambda: demo.main(args), lambda: "`ganime demo` starts a new run each time")


def cmd_recipes(args) -> None:
    from ray_ganime.recipes import RECIPES, recipe_class

    cfg = _load(args)
    cfg.data.load_size = max(cfg.data.load_size, args.size)
    cfg.data.crop_size = args.size
    # The config's model / loss options (and init phase) are its recipe's; every other recipe is shown with
    # its defaults.
    others = {"model": {}, "loss": {}, "optim": cfg.optim.model_copy(update={"init_epochs": 0})}
    recipes = {name: recipe_class(name).unbuilt(cfg if name == cfg.recipe else
                                                cfg.model_copy(update={"recipe": name, **others}))
               for name in sorted(RECIPES)}
    print(f"{'recipe':<12} {'network':<8} {'parameters':>14}   (at {args.size} px)")
    for name, recipe in recipes.items():
        for net, count in type(recipe).network_sizes(recipe.cfg).items():
            print(f"{name:<12} {net:<8} {count:>14,}")
    # What a user serves (one package per direction) and what a sweep may rank by (tune.metric).
    print(f"\n{'recipe':<12} generators (package suffix: network, source -> target)")
    for name, recipe in recipes.items():
        for direction, d in recipe.directions().items():
            print(f"{name:<12} {'-' + direction if direction else '(none)':<8} {d.net}, {d.source} -> {d.target}"
                  f"{' (paired)' if d.paired else ' (unpaired)'}")
    print(f"\n{'recipe':<12} per-epoch validation metrics (tune.metric; FID ones need eval.val_fid)")
    for name, recipe in recipes.items():
        print(f"{name:<12} {', '.join(recipe.metric_names())}")


def cmd_export(args) -> None:
    from ray_ganime import export

    cfg = _load(args)
    uris = export.export_packages(args.checkpoint, args.name, args.dest or cfg.store.uri, cfg.store.options(),
                                  onnx=args.onnx, overwrite=args.overwrite,
                                  directions=[args.direction] if args.direction is not None else None)
    for uri in uris.values():
        _print_package(export.package_meta(uri, cfg.store.options()), uri)


def cmd_import(args) -> None:
    from ray_ganime import export

    cfg = _load(args)
    junyanz = {"netG": args.netG, "ngf": args.ngf, "norm": args.norm}
    if args.kind == "animegan2":
        given = [f"--{k}" for k, v in junyanz.items() if v is not None]
        if given:
            raise cfgmod.ConfigError(f"{', '.join(given)}: for pix2pix and cyclegan checkpoints, not animegan2")
        uri = export.import_animegan2(args.file, args.name, cfg.store.uri, cfg.store.options(),
                                      overwrite=args.overwrite, align_corners=args.align_corners is not False,
                                      native_size=args.native_size, onnx=args.onnx)
    else:
        if args.align_corners is not None:
            raise cfgmod.ConfigError("--align-corners: for animegan2 checkpoints only")
        uri = export.import_junyanz(args.kind, args.file, args.name, cfg.store.uri, cfg.store.options(), **junyanz,
                                    native_size=args.native_size, overwrite=args.overwrite, onnx=args.onnx)
    meta = export.package_meta(uri, cfg.store.options())
    print(f"{uri}\n{args.kind} generator {meta['network']['class']}({meta['network']['args']}), "
          f"{meta['weights']['parameters']:,} parameters, native {meta['native_size']} px (any size: padded to a "
          f"multiple of {meta['size_multiple']}), imported from {meta['training']['imported_from']} "
          f"(sha256 {meta['training']['source_sha256'][:12]})" + (", with ONNX" if meta["onnx"] else ""))


def _print_package(meta: dict, uri: str) -> None:
    from ray_ganime import export

    files = [meta["weights"]["file"]] + ([meta["onnx"]["file"]] if meta["onnx"] else []) + [export.MANIFEST]
    direction = f" ({meta['direction']}: {meta['input'].get('column')} -> {meta['output'].get('column')})" \
        if meta.get("direction") else ""
    print(f"{uri}\n{meta['recipe']} generator{direction}, {meta['weights']['parameters']:,} parameters, native "
          f"{meta['native_size']} px (any size: padded to a multiple of {meta['size_multiple']}), epoch "
          f"{meta['training']['epoch']}\nmetrics: {_metrics_summary(meta['metrics'], meta.get('direction', ''))}\n"
          f"files:   {', '.join(files)}")
    if meta["onnx"]:
        print(f"onnx:    opset {meta['onnx']['opset']}, dynamic batch/height/width, max |onnxruntime - torch| "
              f"{meta['onnx']['verified']['max_abs_diff']:.2g}")


def _metrics_summary(metrics: dict, direction: str = "") -> str:
    """One line: validation SSIM / L1 / FID (the package's direction's, e.g. ``val_fid_a2b``) and evaluation
    FID / SSIM, each FID with its Inception weights."""
    parts = []
    val = metrics.get("validation") or {}
    suffix = f"_{direction}" if direction else ""
    if f"val_ssim{suffix}" in val:
        parts.append(f"val SSIM {val[f'val_ssim{suffix}']:.4f}")
    if f"val_l1{suffix}" in val:
        parts.append(f"val L1 {val[f'val_l1{suffix}']:.4f}")
    if f"val_fid{suffix}" in val:
        parts.append(f"val FID {val[f'val_fid{suffix}']:.4g} [{val.get('val_fid_backbone')}]")
    # The recipe's own measures (CycleGAN's val_cycle_l1, AnimeGAN's val_content / val_color)
    parts += [f"{k} {v:.4g}" for k, v in val.items() if not k.startswith(("val_ssim", "val_l1", "val_fid"))
              and k != "val_images" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    ev = metrics.get("evaluation")
    if ev:
        backbone = ev.get("fid_backbone") or {}
        note = "; random-init: not a real FID" if backbone.get("random_init") else ""
        if "fid" in ev:
            parts.append(f"eval FID {ev['fid']:.4g} [{backbone.get('name')}{note}]")
        if "ssim" in ev:
            parts.append(f"eval SSIM {ev['ssim']:.4f} ({ev.get('num_images', '?')} images)")
        parts += _baselines_summary(ev)
    return ", ".join(parts) or "none recorded"


def _baselines_summary(evaluation: dict) -> list[str]:
    """What the trivial baselines score beside an evaluation, and whether the model beats copying its input."""
    from ray_ganime import baselines as trivial

    scored, shortfall = trivial.scored(evaluation), trivial.shortfall(evaluation)
    return ([f"baselines: {scored}"] if scored else []) + ([f"the model {shortfall}"] if shortfall else [])


def _fmt_optional(value) -> str:
    return "-" if value is None else str(value)


def cmd_serve(args) -> None:
    if not os.environ.get("RAY_ADDRESS"):  # on a Ray of our own; a cluster's Serve runs as the cluster says
        # Ray's switch for a node on 127.0.0.1 only (its default on macOS and Windows): the GCS, raylet, agents
        # and dashboard listen on loopback. Ray reads it when it is imported: before `runtime` imports it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from ray_ganime import runtime

        runtime.use_serve_high_throughput()
    from ray_ganime import serve

    options = {"serve.host": args.host, "serve.port": args.port}
    serve.run_local(cfgmod.load_tree(args.config, _overrides(args, **options)))


def cmd_models(args) -> None:
    from ray_ganime import export, inference

    cfg = _load(args)
    # What `ganime serve` over this store would serve, and what it would report as broken.
    packages, broken = inference.scan_servable(cfg.store.uri, cfg.store.options(), cfg.serve.max_parameters)
    if not packages and not broken:
        print(f"no model packages in {storage.join(cfg.store.uri, 'models')}")
        return
    print(f"{'name':<24} {'recipe':<10} {'size':>5} {'epoch':>6}  {'created':<25} metrics (or source)")
    for meta in packages:
        name = meta["uri"].rstrip("/").rsplit("/", 1)[-1]
        onnx = " +onnx" if meta.get("onnx") else ""
        epoch = (meta.get("training") or {}).get("epoch")
        source = export.package_source(meta)
        summary = (_metrics_summary(meta.get("metrics") or {}, meta.get("direction", "")) if "trained" in source
                   else f"imported from {source['imported']} {source['file']} (sha256 {(source['sha256'] or '')[:12]})")
        print(f"{name:<24} {_fmt_optional(meta.get('recipe')):<10} {meta['native_size']:>5} {_fmt_optional(epoch):>6}  "
              f"{_fmt_optional(meta.get('created')):<25} {summary}{onnx}")
    for package in broken:  # listed, so that nobody wonders where a package went
        print(f"{package['name']:<24} BROKEN: {package['reason']}")


def _print_manifest(dest: str, manifest: dict) -> None:
    from ray_ganime import shards

    print(f"wrote {dest}\n{shards.describe(manifest)}")


# `ganime import`'s kinds: export.IMPORT_SOURCES's keys, without importing torch to build the parser.
IMPORT_KINDS = ["animegan2", "cyclegan", "pix2pix"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets: synthesise, ingest, inspect").add_subparsers(dest="data_cmd", required=True)

    p = data.add_parser("synth", help="draw a synthetic anime data set (deterministic for a seed)")
    p.add_argument("--kind", choices=sorted(SYNTH_KIND_TO_SHARDS), default="paired")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="data set URI, or a bare name under <store>/datasets/")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--shard-mb", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    _config_args(p)
    p.set_defaults(func=cmd_synth)

    p = data.add_parser("ingest", help="local image folder -> Parquet shards on a store")
    p.add_argument("--layout", required=True, choices=["paired-concat", "paired-dirs", "unpaired", "folder"])
    p.add_argument("src", help="local source folder")
    p.add_argument("dest", help="data set URI, or a bare name under <store>/datasets/")
    p.add_argument("--test-fraction", type=float, default=0.2, help="where the folders give no train/test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color-side", choices=["left", "right"], default="left", help="paired-concat: colour half")
    p.add_argument("--a-is", choices=["sketch", "color"], default="sketch", help="paired-dirs: what A/ holds")
    p.add_argument("--max-side", type=int, help="downscale larger images to this longest side (re-encodes PNG)")
    p.add_argument("--shard-mb", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    _config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = data.add_parser("inspect", help="counts, shards, skipped files, and a contact-sheet PNG")
    p.add_argument("uri")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--out", help="contact sheet path (default ./contact_sheet-<name>.png)")
    _config_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="train a recipe on Ray Train (see configs/)")
    p.add_argument("--resume-from", help="start from this checkpoint folder (local or s3://)")
    p.add_argument("--run-name", help="run folder name under <store>/runs; the same name resumes")
    p.add_argument("--evaluate", action="store_true", help="evaluate the final checkpoint on the held-out split")
    _config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="FID and SSIM of a checkpoint's generator on a data set's held-out split")
    p.add_argument("--model", required=True, help="checkpoint folder (local or s3://)")
    p.add_argument("--data", help="data set URI or name (default: the one the model was trained on)")
    p.add_argument("--out", help="where metrics.json, results.md and samples.png go (default: beside the model)")
    _config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune", help="a loss-weight sweep on Ray Tune (search dimensions written in the config)")
    p.add_argument("config", nargs="?", help="YAML config with search dimensions, e.g. configs/pix2pix_tv_sweep.yaml")
    p.add_argument("--resume", metavar="NAME", help="finish the unfinished trials of sweep NAME (<store>/sweeps/NAME)")
    p.add_argument("--name", help="sweep name (default: sweep-<recipe>-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=20 (repeatable)")
    p.add_argument("--store", help="store root URI (local folder or s3://bucket/prefix); default $GANIME_STORE")
    _verbose_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="a checkpoint's generators -> model packages <store>/models/NAME[-DIRECTION]")
    p.add_argument("checkpoint", help="checkpoint folder (local or s3://)")
    p.add_argument("--name", required=True, help="package name (letters, digits, '.', '_', '-')")
    p.add_argument("--direction", help="only this generator of a recipe with several (e.g. a2b: package NAME-a2b; "
                                       "default: all of them; `ganime recipes` lists them)")
    p.add_argument("--dest", help="store to write the package to (default: --store / store.uri)")
    p.add_argument("--onnx", action="store_true", help="also write an ONNX graph (any size; needs ray-ganime[export])")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package of that name")
    _config_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="a generator checkpoint of another project -> model package <store>/models/NAME")
    p.add_argument("kind", choices=IMPORT_KINDS,
                   help="animegan2: a bryandlee/animegan2-pytorch state dict (.pt); pix2pix, cyclegan: a "
                        "junyanz/pytorch-CycleGAN-and-pix2pix generator (latest_net_G.pth, latest_net_G_A.pth)")
    p.add_argument("file", help="the checkpoint file (local or s3://)")
    p.add_argument("--name", required=True, help="package name (letters, digits, '.', '_', '-')")
    p.add_argument("--netG", help="pix2pix/cyclegan: the --netG it was trained with (default unet_256 for pix2pix, "
                                  "resnet_9blocks for cyclegan; also unet_128, resnet_6blocks)")
    p.add_argument("--ngf", type=int, help="pix2pix/cyclegan: its --ngf (default: read off the file)")
    p.add_argument("--norm", choices=["batch", "instance"],
                   help="pix2pix/cyclegan: its --norm (default batch for pix2pix, instance for cyclegan)")
    p.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                   help="animegan2: the resize the outputs are computed with (default: on, as the port's released "
                        "weights)")
    p.add_argument("--native-size", type=int,
                   help="the size the weights were trained at (default 512 for animegan2, else the --netG's 256/128)")
    p.add_argument("--onnx", action="store_true", help="also write an ONNX graph (needs the 'export' extra)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package of that name")
    _config_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("serve", help="the HTTP API and page over a store's model packages, on a local Ray")
    p.add_argument("--host", help="address to bind (default serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default serve.port, 8000)")
    _config_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="the model packages in a store, with their metrics")
    _config_args(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="every recipe's networks with parameter counts, generators and metrics")
    p.add_argument("--size", type=int, default=256, help="image size the networks are built for")
    _config_args(p)
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("demo", help="the main job on the embedded default: synthetic pairs -> train -> evaluate")
    p.add_argument("--count", type=int, default=400, help="synthetic pairs to draw (once; reused later)")
    _config_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


# The commands that start a Ray of their own when $RAY_ADDRESS names none.
STARTS_RAY = ("train", "evaluate", "tune", "serve", "demo")


def own_ray_uses_token_auth() -> None:
    """A Ray that ganime starts uses token auth whatever $RAY_AUTH_MODE says: without it each Serve replica's gRPC
    server, which Ray binds to every interface, runs (unpickles) calls from any host. Ray reads the mode when it
    is imported and its processes when they start, so this comes first. A cluster joined through $RAY_ADDRESS
    keeps its own setting."""
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if os.environ.get("RAY_ADDRESS", "local") != "local" or mode.lower() == "token":
        return
    print(f"ganime: RAY_AUTH_MODE={mode} ignored: the local Ray that ganime starts always uses token auth",
          file=sys.stderr)
    os.environ["RAY_AUTH_MODE"] = "token"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "verbose", False):
        from ray_ganime import runtime

        runtime.SHOW_RAY_LOGS = True
    if args.command in STARTS_RAY:
        own_ray_uses_token_auth()
    try:
        args.func(args)
    except (cfgmod.ConfigError, storage.StorageError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"ganime: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
