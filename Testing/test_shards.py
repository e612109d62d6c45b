"""A cohort's detection split into shards (a job array's tasks, torchrun's ranks) writes what one run writes."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk

from MedAutoencoderLib.data import synthetic
from MedAutoencoderLib.detection.shards import Shard, parse_shard, process_shard
from MedAutoencoderLib.training.distributed import DistributedContext


def test_shards_are_counted_from_one_and_checked():
    assert parse_shard("2/4") == Shard(2, 4) and parse_shard(" 4 / 4 ") == Shard(4, 4)
    for text, message in [("0/4", "count from 1"), ("5/4", "1 <= K <= N"), ("1/0", "1 <= K <= N"),
                          ("2", "must be K/N"), ("a/b", "must be K/N"), ("-1/2", "must be K/N")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_shard(text)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_shares_cover_the_list_once_in_order(count):
    items = list(range(10))
    shares = [Shard(k, count).share(items) for k in range(1, count + 1)]
    assert sorted(i for share in shares for i in share) == items
    assert shares[0] == items[::count]


def test_ranks_split_a_shard_as_one_finer_shard_of_the_whole_list():
    items = list(range(23))
    for rank in range(3):
        context = DistributedContext(rank=rank, local_rank=rank, world_size=3, launched=True)
        assert process_shard(None, context).share(items) == Shard(rank + 1, 3).share(items)
        assert process_shard(Shard(2, 4), context).share(items) == Shard(2, 4).share(items)[rank::3]
    assert process_shard(None, DistributedContext()) is None
    assert process_shard(Shard(1, 2), DistributedContext()) == Shard(1, 2)


def detect(*args, env=None, launcher=None, timeout=300) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"  # as torchrun sets it: the same arithmetic in every run compared
    command = [*(launcher or [sys.executable]), "-m", "MedAutoencoderLib", "detect", *map(str, args),
               "--device", "cpu", "--progress", "lines"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def written(folder: Path) -> Dict[str, object]:
    """Every file of ``folder``: voxel arrays of images, the parsed summaries."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".json"):
            files[path.name] = json.loads(path.read_text())
        else:
            image = sitk.ReadImage(str(path))
            files[path.name] = (sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                                image.GetDirection())
    return files


def assert_same_files(one: Path, other: Path) -> None:
    a, b = written(one), written(other)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".json"):
            assert a[name] == b[name], name
        else:
            assert np.array_equal(a[name][0], b[name][0]) and a[name][1:] == b[name][1:], name


@pytest.fixture(scope="module")
def single_run(toy_cohort, dae_model_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    done = detect(toy_cohort, "--model", dae_model_path, "--output-dir", out)
    assert done.returncode == 0, done.stderr
    assert len(list(out.iterdir())) == 4 * 5
    return out


@pytest.mark.slow
def test_two_job_array_shards_write_the_files_of_one_run(toy_cohort, dae_model_path, single_run, tmp_path):
    out = tmp_path / "sharded"
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    shards = [subprocess.Popen([sys.executable, "-m", "MedAutoencoderLib", "detect", str(toy_cohort), "--model",
                                str(dae_model_path), "--output-dir", str(out), "--shard", f"{k}/2", "--device", "cpu",
                                "--progress", "lines"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment) for k in (1, 2)]  # at the same time, into one folder
    results = [process.communicate(timeout=300) for process in shards]
    for process, (_, stderr) in zip(shards, results):
        assert process.returncode == 0, stderr
    assert "shard 1/2: 3 of 5 input(s)" in results[0][1] and "shard 2/2: 2 of 5 input(s)" in results[1][1]
    assert_same_files(single_run, out)


@pytest.mark.slow
def test_more_shards_than_inputs_leave_the_last_with_nothing_to_do(toy_cohort, dae_model_path, tmp_path):
    done = detect(toy_cohort, "--model", dae_model_path, "--output-dir", tmp_path / "out", "--shard", "7/7")
    assert done.returncode == 0 and "shard 7/7: 0 of 5 input(s); nothing to do" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_torchrun_ranks_write_the_files_of_one_run(toy_cohort, dae_model_path, single_run, tmp_path):
    out = tmp_path / "ranks"
    done = detect(toy_cohort, "--model", dae_model_path, "--output-dir", out, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    assert "shard 1/2: 3 of 5 input(s)" in done.stderr and "shard 2/2: 2 of 5 input(s)" in done.stderr
    assert_same_files(single_run, out)


@pytest.mark.slow
def test_a_rank_whose_volumes_fail_names_them_and_the_other_rank_finishes(dae_model_path, tmp_path):
    """Rank 0's share is three broken files, rank 1's three large volumes: rank 0 ends at once, with an error,
    and torchrun would then stop rank 1 in the middle of its share, were the ranks not finishing together."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    large = synthetic.toy_volume(np.random.default_rng(0), shape=(192, 192, 160), spacing=(0.5, 0.5, 0.6))
    for i in range(3):
        (cohort / f"{2 * i}_broken.nii.gz").write_bytes(b"not an image")
        sitk.WriteImage(large, str(cohort / f"{2 * i + 1}_large.nii.gz"))
    out = tmp_path / "out"
    done = detect(cohort, "--model", dae_model_path, "--output-dir", out, "--keep-going", launcher=TORCHRUN)
    assert done.returncode != 0
    ours = done.stderr.split("ChildFailedError")[0].split("Traceback")[0]  # torchrun then prints its own traceback
    assert "error: shard 1/2 (rank 0 of 2): 3 of 3 volumes failed" in ours
    assert all(f"{2 * i}_broken.nii.gz: cannot be read" in ours for i in range(3))
    assert sorted(p.name for p in out.glob("*_summary.json")) == [f"{2 * i + 1}_large_summary.json" for i in range(3)]
