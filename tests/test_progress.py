"""The driver's per-epoch lines (ray_ganime/progress.py), read from a run folder as rank 0 writes it. A real
`ganime train` terminal: tests/test_train.py's Ctrl-C test."""

from __future__ import annotations

import json
from pathlib import Path

from ray_ganime import checkpoints, progress

EPOCH = {"epoch": 3, "global_step": 30, "epoch_time_s": 2.0, "images_per_s": 64.2, "lr_G": 2e-4, "lr_D": 2e-4,
         "loss_G": 1.23456, "loss_D": 0.5, "G_L1": 0.25, "val_ssim": 0.512, "val_split": "test", "val_images": 8,
         "vgg_weights": "RANDOM-INIT VGG19 (seeded)", "baseline_copy_val_ssim": 0.852, "baseline_copy_val_l1": 0.25}


def test_an_epoch_is_one_line_of_losses_scores_speed_and_time_left():
    assert progress.epoch_line(EPOCH, 40, 3723.0) == \
        "epoch 3/40  G_L1 0.25  loss_D 0.5  loss_G 1.235  val_ssim 0.512  64 img/s  2.0 s  eta 1:02:03"
    assert progress.epoch_line({"epoch": 1}, 2, None) == "epoch 1/2"


def test_random_weights_and_the_copy_baseline_are_told_once(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shown = progress.RunProgress(str(run), None, epochs=5, start_epoch=2, interval_s=0.05)
    lines = [{**EPOCH, "epoch": e} for e in (1, 2, 3, 4)]  # 1 and 2: before the resume, not shown again
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (run / checkpoints.folder_name(4)).mkdir()
    (run / checkpoints.folder_name(4) / checkpoints.META_FILE).write_text("{}")
    shown.close()
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in out] == ["warning: vgg uses RANDOM-INIT VGG19 (seeded): its numbers are "
                                                     "not comparable with runs that used the real weights",
                                                     "copying the input scores val_l1 0.25",
                                                     "epoch 3/5", "epoch 4/5"]
    assert out[1] == "copying the input scores val_l1 0.25  val_ssim 0.852 on the same images"
    assert shown.checkpoint == str(Path(run) / checkpoints.folder_name(4))
