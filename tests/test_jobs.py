"""`ray job submit` of jobs/train.py to a real `ray start --head` cluster (tests/cluster.py), the way the
README runs it."""

from __future__ import annotations

import json
import sys
import time
import uuid

import pytest
from servers import ANSI, REPO, ray_start_head, tail

from ray_ganime.config import load_config
from ray_ganime.demo import ensure_synthetic

DATASET = ("synthetic-paired-60x32", "paired", 60, 32)  # 48 train / 12 test rows


@pytest.mark.timeout(360)
def test_ray_job_submit_trains_and_checkpoints(tmp_path):
    store = tmp_path / "store"
    data_uri = ensure_synthetic(*DATASET, load_config(None, [f"store.uri={store}"]))
    run = f"job-{uuid.uuid4().hex[:8]}"
    job_id = f"ganime-test-{uuid.uuid4().hex[:8]}"
    overrides = [f"store.uri={store}", f"data.uri={data_uri}", f"train.run_name={run}", "recipe=pix2pix",
                 "model.ngf=8", "model.ndf=8", "data.load_size=36", "data.crop_size=32", "data.batch_size=4",
                 "data.shuffle_buffer=8", "data.map_batch_size=16", "train.epochs=1",
                 "train.max_steps_per_epoch=2", "train.cpus_per_worker=0.5", "train.num_workers=1"]

    started = time.perf_counter()
    with ray_start_head(tmp_path) as cluster:
        up = time.perf_counter()
        # sys.executable, not `python`: the job's PATH need not lead to this venv.
        submit = cluster.ray("job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
                             "--working-dir", str(REPO), "--", sys.executable, "jobs/train.py",
                             *[a for o in overrides for a in ("--set", o)], timeout=180)
        output = ANSI.sub("", submit.stdout + submit.stderr)
        (tmp_path / "job-submit.log").write_text(output)
        print(f"cluster up in {up - started:.1f} s, `ray job submit` {time.perf_counter() - up:.1f} s")
        assert submit.returncode == 0, (f"`ray job submit` exited {submit.returncode}:\n{output[-4000:]}\n"
                                        f"ray start log:\n{tail(cluster.log)}")
        status = cluster.ray("job", "status", "--address", cluster.dashboard, job_id, timeout=60)
        assert f"Job '{job_id}' succeeded" in ANSI.sub("", status.stdout + status.stderr), status.stdout + status.stderr
        assert cluster.job_info(job_id)["status"] == "SUCCEEDED"

    run_dir = store / "runs" / run
    assert (run_dir / "checkpoint_epoch_0001" / "state.pt").is_file(), sorted(p.name for p in run_dir.iterdir())
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
    assert "checkpoint_epoch_0001" in output  # the CLI's summary, printed by the job
    print(f"test total {time.perf_counter() - started:.1f} s")
