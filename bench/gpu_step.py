"""The plain training step on one device vs the canonical PyTorch pix2pix step, with model FLOPs utilisation.

    python bench/gpu_step.py                                  # CUDA: 256 px, batch 32 and 1, every precision
    python bench/gpu_step.py --size 32 --ngf 8 --steps 3      # CPU smoke run, seconds
    python bench/gpu_step.py --compile --fid-images 512 --json out.json

Ours: ``Pix2Pix(cfg, device).train_step`` on device-resident batches (``recipe.example_batch``: channels_last on
CUDA, as the engine feeds), for each ``train.precision`` in --precisions (auto resolves per batch size:
``recipes.base.autocast_dtype``), loss.tv 1e-4 (Pix2Pix + TV, as the GANime study; canonical has no TV term).

Canonical: written here after junyanz/pytorch-CycleGAN-and-pix2pix ``pix2pix_model``: the recursive
``UnetSkipConnectionBlock`` U-Net (unet_256 at 256 px: num_downs = log2(size)), batch norm, dropout 0.5, the
``basic`` PatchGAN (n_layers 3), N(0, 0.02) init, vanilla GAN (BCE with logits) + 100 * L1, D loss halved, Adam
(lr 2e-4, betas (0.5, 0.999)) with PyTorch's defaults, float32, NCHW, ``cudnn.benchmark`` on; the step order of
``optimize_parameters`` (G forward, D update, G update with D frozen).

--nchw adds ours with ``train.channels_last=false`` (CUDA; tells whether channels_last pays at each batch size),
--compile ours with G and D under ``torch.compile`` (default mode).

Timing: each variant's --steps steps run back to back and are timed from a device synchronise to the next (steady
throughput, as training runs); variants take turns for --repeats rounds and the best round of each counts, so load
that comes and goes hits all of them alike. FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` over one
step (forward + backward of G and D, same count for every precision); MFU = FLOPs / step time / peak, with the
peak of the GPU's dense tensor-core rate for the step's dtype (float32 convolutions run as TF32 on tensor cores
under cuDNN's default, so float32 steps are rated against the TF32 peak). No peak is known on CPU: MFU n/a.

Prints one table and RATIO lines: ours/canonical speed at each batch size (canonical ms / ours ms: > 1 is faster),
MFU of each variant; --json writes every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_ganime.config import load_config  # noqa: E402
from ray_ganime.recipes import recipe_class  # noqa: E402
from ray_ganime.recipes.base import autocast_dtype  # noqa: E402

# Dense (no sparsity) tensor-core peaks, TFLOP/s, from the vendors' data sheets (SXM parts).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "H100": {"bfloat16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def peak_tflops(device: torch.device, dtype_name: str, override: float | None = None) -> float | None:
    """The peak for ``dtype_name`` on ``device``, or None where unknown (CPU, unlisted GPU)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[dtype_name]
    return None


# ------------------------------------------------------------------------------------ canonical pix2pix

class UnetSkipConnectionBlock(nn.Module):
    """Canonical's recursive U-Net level (outermost / inner / innermost), activations in place as there."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = norm_layer == nn.InstanceNorm2d
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), norm_layer(inner_nc)
        uprelu, upnorm = nn.ReLU(True), norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def canonical_unet(input_nc: int, output_nc: int, num_downs: int, ngf: int = 64) -> nn.Module:
    block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(num_downs - 5):
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=True)
    block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
    block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
    block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
    return UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)


def canonical_patchgan(input_nc: int, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    """Canonical ``NLayerDiscriminator`` with batch norm (no conv bias before a norm)."""
    seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2**n, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True)]
    prev, mult = mult, min(2**n_layers, 8)
    seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    return nn.Sequential(*seq)


def canonical_init(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """Canonical ``init_weights('normal', 0.02)``."""
    for m in net.modules():
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.constant_(m.bias, 0.0)
    return net


class CanonicalPix2Pix:
    """``Pix2PixModel.optimize_parameters`` of the canonical repository, float32."""

    def __init__(self, size: int, ngf: int, device: torch.device):
        self.netG = canonical_init(canonical_unet(3, 3, int(math.log2(size)), ngf)).to(device).train()
        self.netD = canonical_init(canonical_patchgan(6, ngf, 3)).to(device).train()
        self.criterionGAN = nn.BCEWithLogitsLoss()  # GANLoss("vanilla"), its labels buffers on the device
        self.real_label = torch.tensor(1.0, device=device)
        self.fake_label = torch.tensor(0.0, device=device)
        self.criterionL1 = nn.L1Loss()
        self.lambda_L1 = 100.0
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def gan_loss(self, prediction, target_is_real: bool):
        target = (self.real_label if target_is_real else self.fake_label).expand_as(prediction)
        return self.criterionGAN(prediction, target)

    def train_step(self, batch):
        real_A, real_B = batch["sketch"], batch["color"]
        fake_B = self.netG(real_A)
        self.netD.requires_grad_(True)
        self.optimizer_D.zero_grad()
        pred_fake = self.netD(torch.cat((real_A, fake_B), 1).detach())
        pred_real = self.netD(torch.cat((real_A, real_B), 1))
        loss_D = (self.gan_loss(pred_fake, False) + self.gan_loss(pred_real, True)) * 0.5
        loss_D.backward()
        self.optimizer_D.step()
        self.netD.requires_grad_(False)
        self.optimizer_G.zero_grad()
        pred_fake = self.netD(torch.cat((real_A, fake_B), 1))
        loss_G = self.gan_loss(pred_fake, True) + self.criterionL1(fake_B, real_B) * self.lambda_L1
        loss_G.backward()
        self.optimizer_G.step()
        return {"loss_D": loss_D.detach(), "loss_G": loss_G.detach()}


# ------------------------------------------------------------------------------------ measurement

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def our_recipe(args, batch: int, precision: str, device: torch.device, channels_last: bool = True):
    cfg = load_config(None, ["recipe=pix2pix", f"data.load_size={args.size}", f"data.crop_size={args.size}",
                             f"data.batch_size={batch}", f"model.ngf={args.ngf}", f"model.ndf={args.ngf}",
                             f"loss.tv={args.tv}", f"train.precision={precision}",
                             f"train.channels_last={str(channels_last).lower()}"])
    return recipe_class("pix2pix")(cfg, device)


def step_flops(step, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return counter.get_total_flops()


def variants_for(args, b: int, device: torch.device) -> list[dict]:
    """Every step to time at batch size ``b``: canonical first, then ours per precision (and compiled)."""
    torch.manual_seed(0)
    canonical = CanonicalPix2Pix(args.size, args.ngf, device)
    g = torch.Generator().manual_seed(0)
    canon_batches = [{k: (torch.rand(b, 3, args.size, args.size, generator=g) * 2 - 1).to(device)
                      for k in ("sketch", "color")} for _ in range(2)]
    out = [{"name": "canonical float32", "step": canonical.train_step, "batches": canon_batches, "dtype": "float32"}]
    for p in args.precisions:
        torch.manual_seed(0)
        recipe = our_recipe(args, b, p, device)
        dtype = "bfloat16" if recipe.amp_dtype == torch.bfloat16 else "float32"
        name = f"ours {p}" + (f" ({dtype})" if p == "auto" else "")
        batches = [recipe.example_batch(b, seed=i) for i in range(2)]
        out.append({"name": name, "step": recipe.train_step, "batches": batches, "dtype": dtype})
        if args.nchw and p == args.precisions[0] and device.type == "cuda":  # channels_last is CUDA-only anyway
            torch.manual_seed(0)
            plain = our_recipe(args, b, p, device, channels_last=False)
            out.append({"name": f"{name} NCHW", "step": plain.train_step,
                        "batches": [plain.example_batch(b, seed=i) for i in range(2)], "dtype": dtype})
        if args.compile and p == args.precisions[0]:
            torch.manual_seed(0)
            compiled = our_recipe(args, b, p, device)
            compiled.wrap(torch.compile)  # G and D as the step calls them (train_nets)
            out.append({"name": f"{name} compiled", "step": compiled.train_step, "batches": batches, "dtype": dtype})
    return out


def time_variants(variants: list[dict], args, device: torch.device) -> None:
    for v in variants:  # warm-up: cuDNN's benchmark search, compilation, allocator growth
        for i in range(args.warmup):
            v["step"](v["batches"][i % 2])
        v["ms"] = math.inf
    synchronize(device)
    for _ in range(args.repeats):
        for v in variants:
            synchronize(device)
            t = time.perf_counter()
            for i in range(args.steps):
                v["step"](v["batches"][i % 2])
            synchronize(device)
            v["ms"] = min(v["ms"], 1000 * (time.perf_counter() - t) / args.steps)


def fid_feature_rate(n: int, device: torch.device, batch: int = 64) -> float:
    """Images/s of the FID Inception (random weights: the same network and cost) on ``n`` uint8 images."""
    import numpy as np

    from ray_ganime.metrics.inception import inception_features, load_fid_inception

    batch = min(batch, n)
    model = load_fid_inception("random", device=device)[0]
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 299, 299, 3), dtype=np.uint8)
    inception_features(model, pixels, device)  # warm-up
    synchronize(device)
    t, done = time.perf_counter(), 0
    while done < n:
        inception_features(model, pixels, device)  # returns on the host: synchronised
        done += batch
    return done / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    ap.add_argument("--size", type=int, default=256, help="crop size (a power of two; U-Net depth log2(size))")
    ap.add_argument("--ngf", type=int, default=64, help="ngf = ndf, both sides")
    ap.add_argument("--batches", default="32,1", help="comma-separated batch sizes")
    ap.add_argument("--precisions", default="auto,bfloat16,float32", help="train.precision values (ours)")
    ap.add_argument("--tv", type=float, default=1e-4, help="ours: loss.tv (the study's Pix2Pix + TV)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best of each variant counts")
    ap.add_argument("--compile", action="store_true", help="also time ours (first precision) with torch.compile")
    ap.add_argument("--nchw", action="store_true",
                    help="CUDA: also time ours (first precision) with train.channels_last=false")
    ap.add_argument("--peak-tflops", type=float, help="peak to rate MFU against (default: the table, by GPU name)")
    ap.add_argument("--fid-images", type=int, default=0, help="also time FID Inception features on this many")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in args.precisions:
        autocast_dtype("cpu", p, 1)  # refuses an unknown precision before anything is built
    batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.size < 32 or args.size & (args.size - 1):
        ap.error("--size must be a power of two >= 32 (the canonical U-Net has at least 5 levels)")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 2 or not batch_sizes or min(batch_sizes) < 1:
        ap.error("need --steps >= 1, --repeats >= 1, --warmup >= 2 and batch sizes >= 1")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # canonical sets it too; ours does in Recipe.__init__
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"pix2pix step, {args.size} px, ngf = ndf = {args.ngf}, on {what}; torch {torch.__version__}", flush=True)

    rows, ratios = [], {}
    for b in batch_sizes:
        variants = variants_for(args, b, device)
        time_variants(variants, args, device)
        # One count per step kind: FLOPs do not depend on the dtype, and ours has the canonical nets (+ TV).
        flops = {"canonical": step_flops(variants[0]["step"], variants[0]["batches"][0]),
                 "ours": step_flops(variants[1]["step"], variants[1]["batches"][0])}
        canonical_ms = variants[0]["ms"]
        for v in variants:
            f = flops["canonical" if v["name"].startswith("canonical") else "ours"]
            peak = peak_tflops(device, v["dtype"], args.peak_tflops)
            mfu = f / (v["ms"] / 1000) / (peak * 1e12) if peak else None
            rows.append({"batch": b, "variant": v["name"], "dtype": v["dtype"], "ms": v["ms"],
                         "images_per_s": 1000 * b / v["ms"], "tflop_per_step": f / 1e12, "mfu": mfu,
                         "vs_canonical": canonical_ms / v["ms"]})
            if not v["name"].startswith("canonical"):
                ratios[f"batch {b}: {v['name']} / canonical"] = canonical_ms / v["ms"]
        del variants
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{'batch':>5}  {'variant':<28} {'ms/step':>8} {'img/s':>8} {'TFLOP/step':>10} {'MFU':>6} {'vs canonical':>12}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{r['batch']:>5}  {r['variant']:<28} {r['ms']:8.2f} {r['images_per_s']:8.1f} {r['tflop_per_step']:10.4f} "
              f"{mfu:>6} {r['vs_canonical']:11.2f}x")
    print()
    for k, v in ratios.items():
        target = "   (target: >= 1.0)" if k.startswith("batch 1:") and "auto" in k else ""
        print(f"RATIO {k} (speed, canonical ms / ours ms): {v:.2f}{target}")
    for r in rows:
        if r["variant"].startswith("ours") and r["mfu"] is not None:
            target = "   (target: >= 30%)" if r["batch"] == 32 and r["dtype"] == "bfloat16" else ""
            print(f"MFU batch {r['batch']}, {r['variant']}: {r['mfu']:.1%}{target}")
    if device.type != "cuda" and not args.peak_tflops:
        print("MFU: n/a (no peak known for this device; --peak-tflops sets one)")
    result = {"device": what, "size": args.size, "ngf": args.ngf, "torch": torch.__version__, "rows": rows,
              "ratios": ratios}
    if args.fid_images:
        result["fid_images_per_s"] = fid_feature_rate(args.fid_images, device)
        print(f"FID Inception features, float32, {device.type}: {result['fid_images_per_s']:.1f} images/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
