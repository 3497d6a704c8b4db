"""Several processes on CPU (gloo, 127.0.0.1 only): DDP gradients against one process on the
whole batch (RBP's custom backward and the LCP's double backward included), SyncBN, training
and evaluation in two processes, the two-"machine" launch, kill-and-resume, and the SLURM job."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from _dist_workers import (
    ToyModel,
    evaluate_and_save,
    toy_cfg,
    toy_gradients,
    toy_inputs,
    toy_loss,
    train_and_save,
)
from detectron2.engine import launch

from rpanoptic.data import SceneSpec, generate_synthetic_panoptic

pytestmark = pytest.mark.distributed


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
QUICK = os.path.join(ROOT, "configs/quick_schedules/panoptic_rfpn_R_18_crbp_instant_test.yaml")
SMALL = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"]
SMALL += ["MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"]
SMALL += ["MODEL.HGRU.GN_GROUPS", "8", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN"]
SMALL += ["96", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "INPUT.RANDOM_FLIP"]
SMALL += ["none", "SOLVER.BASE_LR", "0.01", "TEST.EVAL_PERIOD", "0", "SEED", "7"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(fn, *args):
    launch(fn, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=args)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_panoptic(
        str(root / "synthetic_panoptic"), {"train": 4, "val": 4}, spec=SceneSpec(size=96)
    )
    os.environ["RPANOPTIC_DATASETS"] = str(root)  # for the spawned processes' registration
    from rpanoptic.data import register_synthetic_panoptic

    register_synthetic_panoptic(str(root / "synthetic_panoptic"))
    yield str(root)
    os.environ.pop("RPANOPTIC_DATASETS")
    register_synthetic_panoptic()


@pytest.mark.parametrize(
    "grad, norm",
    [
        ("crbp", "GN"),
        ("cbptt", "GN"),
        ("bptt", "GN"),
        ("rbp", "SyncBN"),
        ("bptt", "SyncBN"),
        ("crbp", "SyncBN"),
    ],
)
def test_ddp_gradient_equals_one_process_on_the_whole_batch(tmp_path, grad, norm):
    launch_two(toy_gradients, grad, norm, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    cfg = toy_cfg(grad, "BN" if norm == "SyncBN" else norm)  # one process: plain BatchNorm
    model = ToyModel(cfg)
    toy_loss(model, toy_inputs()).backward()
    if grad.startswith("c"):
        assert model.recurrence.lcp > 0.01  # the penalty's double backward is exercised
    for name, p in model.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name], ranks[1]["grads"][name])
        torch.testing.assert_close(ranks[0]["grads"][name], p.grad, rtol=1e-7, atol=1e-10)
    if norm == "SyncBN":  # both processes normalised with the statistics of the whole batch
        stats = {n: b for n, b in model.named_buffers() if n.endswith(("_mean", "_var"))}
        assert len(stats) == 8
        for name, theirs in stats.items():
            for rank in ranks:
                torch.testing.assert_close(rank["buffers"][name], theirs, rtol=1e-7, atol=1e-10)


def _train_argv(out, *extra):
    argv = ["--config-file", QUICK, *SMALL, "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu"]
    return argv + [str(e) for e in extra]


@pytest.mark.parametrize("grad", ["crbp", "bptt"])
def test_two_process_training_keeps_ranks_identical(datasets, tmp_path, grad):
    out = str(tmp_path / "run")
    argv = _train_argv(out, "MODEL.RECURRENT.GRAD", grad, "SOLVER.MAX_ITER", 2)
    launch_two(train_and_save, argv, str(tmp_path))
    first, second = (torch.load(tmp_path / f"params{r}.pt") for r in (0, 1))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)
    with open(os.path.join(out, "metrics.json")) as f:
        last = [json.loads(line) for line in f if "total_loss" in line][-1]
    assert last["iteration"] == 1 and last["loss_lcp" if grad == "crbp" else "loss_mask"] >= 0


def test_two_process_evaluation_gives_the_single_process_pq(datasets, tmp_path):
    out = str(tmp_path / "train")
    subprocess.run(
        [sys.executable, TRAIN_NET, *_train_argv(out, "SOLVER.MAX_ITER", 3)],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env=dict(os.environ),
    )
    weights = os.path.join(out, "model_final.pth")
    pq = []
    for processes in (1, 2):
        folder = tmp_path / f"eval{processes}"
        folder.mkdir()
        argv = ["--eval-only", *_train_argv(str(folder), "MODEL.WEIGHTS", weights)]
        if processes == 1:
            evaluate_and_save(argv, str(folder))
        else:
            launch_two(evaluate_and_save, argv, str(folder))
        with open(folder / "results.json") as f:
            pq.append(json.load(f)["panoptic_seg"])
    assert pq[0].keys() == pq[1].keys() and pq[0]["PQ"] >= 0
    for key in pq[0]:
        assert pq[1][key] == pytest.approx(pq[0][key], abs=1e-9), key


def test_num_gpus_and_two_machines_on_loopback(datasets, tmp_path):
    out = str(tmp_path / "gpus")
    done = subprocess.run(
        [sys.executable, TRAIN_NET, "--num-gpus", "2", *_train_argv(out, "SOLVER.MAX_ITER", 1)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert "world size: 2" in done.stderr or "Rank of current process: 0. World size: 2" in (
        done.stdout + done.stderr
    )

    out = str(tmp_path / "machines")
    url = f"tcp://127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                TRAIN_NET,
                "--num-gpus",
                "1",
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                url,
                *_train_argv(out, "SOLVER.MAX_ITER", 1),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_killed_run_resumes_to_the_uninterrupted_parameters(datasets, tmp_path):
    extra = ["SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()"]
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    subprocess.run(
        [sys.executable, TRAIN_NET, *_train_argv(whole, *extra)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )

    proc = subprocess.Popen(
        [sys.executable, TRAIN_NET, *_train_argv(cut, *extra)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = os.path.join(cut, "model_0000003.pth")
    deadline = time.time() + 300
    while not os.path.isfile(checkpoint) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isfile(checkpoint) and not os.path.isfile(os.path.join(cut, "model_final.pth"))

    resumed = subprocess.run(
        [sys.executable, TRAIN_NET, "--resume", *_train_argv(cut, *extra)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Loading from {cut}/model_000000" in resumed.stdout  # the last checkpoint
    a = torch.load(os.path.join(whole, "model_final.pth"))["model"]
    b = torch.load(os.path.join(cut, "model_final.pth"))["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)

    changed = subprocess.run(
        [
            sys.executable,
            TRAIN_NET,
            "--resume",
            *_train_argv(cut, *extra, "SOLVER.MAX_ITER", 12, "MODEL.RECURRENT.TIMESTEPS", 4),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert changed.returncode != 0
    assert "MODEL.RECURRENT.TIMESTEPS: checkpoint 3, config 4" in changed.stderr


def test_slurm_job_trains_with_submitits_debug_executor(datasets, tmp_path, monkeypatch):
    from rpanoptic.engine.slurm import TrainJob, make_executor, submit

    out = str(tmp_path / "slurm_run")
    argv = ["--config-file", QUICK, *SMALL, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "1"]
    executor = make_executor(str(tmp_path / "jobs"), gpus_per_node=1, cluster="debug")
    job = submit(executor, argv, gpus_per_node=1)
    job.result()
    assert os.path.isfile(os.path.join(out, "model_final.pth"))

    requeued = TrainJob(argv, 8).checkpoint()
    assert requeued.function.train_argv[0] == "--resume" and requeued.function.gpus_per_node == 8

    class Env:  # what submitit.JobEnvironment reads from SLURM's variables
        job_id, node, num_nodes, hostnames = "4242", 1, 3, ["gpu-a", "gpu-b", "gpu-c"]

    args = TrainJob(argv, 8).distributed_args(Env())
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 3, 1)
    assert args.dist_url.startswith("tcp://gpu-a:")

    bin_dir = tmp_path / "bin"  # submitit's SLURM executor looks for srun before anything else
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = make_executor(
        str(tmp_path / "sbatch"),
        nodes=3,
        gpus_per_node=8,
        cluster="slurm",
        partition="gpu",
        timeout_min=60,
    )
    script = slurm._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu"):
        assert f"#SBATCH {line}" in script, line
    assert "--signal=USR2@" in script  # preemption/timeout reaches the job, which requeues
