"""`make compare`: train a plan of models with one schedule over several seeds, then put them side
by side: PQ as mean and spread over seeds, a paired test of each against its baseline (same
seeds), parameters, training memory, step and inference time, and PQ against inference steps.

A plan is a list of :class:`Entry`. An entry may start from the final weights of another
(``init_from``) and train for a fraction of the schedule: that is how the fine-tuning path of a
COCO user is compared (a feed-forward model trained for half the schedule, then fine-tuned for
the other half as an RFPN C-RBP model, against the same model trained on as feed-forward).

Each (entry, seed) run happens in a fresh process (``launch``) so that its peak memory is its
own, and writes one small JSON result file to ``results_dir/<entry>/seed<k>.json`` (meant to be
committed); a run whose result file exists is not repeated, so an interrupted comparison
resumes, also on another machine. Checkpoints stay in ``output_dir`` (never committed); a run
that starts from another's weights re-trains that run when its checkpoint is missing.
"""

import json
import logging
import os
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.data import build_detection_test_loader

from ..evaluation.comparison import COUNTS, METRICS, summarize, write_comparison
from ..evaluation.grouping import instance_grouping
from ..evaluation.report import read_metrics
from .demo import demo_config, has_recurrence, standard_dataset, train_and_evaluate
from .setup import get_rpanoptic_cfg

__all__ = [
    "COUNTS",
    "DEFAULT_PLAN",
    "Entry",
    "describe",
    "plan_from_configs",
    "run_one",
    "run_plan",
    "summarize",
    "write_comparison",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One model of a comparison.

    Attributes:
        name: folder and key of its results (unique in a plan).
        label: how tables and plots name it.
        config: config file, relative to the repository root.
        opts: KEY VALUE overrides for this entry only.
        fraction: fraction of the schedule's iterations it trains for.
        init_from: name of the entry whose final weights it starts from ("" for none).
        baseline: name of the entry it is tested against (paired over seeds); "" for none.
    """

    name: str
    label: str
    config: str
    opts: Tuple[str, ...] = ()
    fraction: float = 1.0
    init_from: str = ""
    baseline: str = "ff"


_SYN = "configs/Synthetic/"
DEFAULT_PLAN: List[Entry] = [
    Entry("ff", "feed-forward", _SYN + "panoptic_fpn_R_18.yaml", baseline=""),
    Entry("rfpn_bptt3", "RFPN, BPTT N=3", _SYN + "panoptic_rfpn_R_18_bptt.yaml"),
    Entry(
        "rfpn_rbp10",
        "RFPN, RBP N=10 (no penalty)",
        _SYN + "panoptic_rfpn_R_18_crbp.yaml",
        ("MODEL.RECURRENT.GRAD", "rbp"),
    ),
    Entry("rfpn_crbp10", "RFPN, C-RBP N=10", _SYN + "panoptic_rfpn_R_18_crbp.yaml"),
    Entry(
        "rmask_crbp10", "recurrent mask head, C-RBP N=10", _SYN + "panoptic_rmask_R_18_crbp.yaml"
    ),
    Entry(
        "ff_half", "feed-forward, half schedule", _SYN + "panoptic_fpn_R_18.yaml", (), 0.5, "", ""
    ),
    Entry(
        "ff_half_ff",
        "feed-forward half + feed-forward half",
        _SYN + "panoptic_fpn_R_18.yaml",
        (),
        0.5,
        "ff_half",
        "",
    ),
    Entry(
        "ff_half_crbp10",
        "feed-forward half + RFPN C-RBP N=10 half (scale 0)",
        _SYN + "panoptic_rfpn_R_18_crbp.yaml",
        ("MODEL.RFPN.SCALE_INIT", "0.0"),
        0.5,
        "ff_half",
        "ff_half_ff",
    ),
]


def describe(cfg) -> str:
    """A short name of what a config trains, e.g. "RFPN p3-p5, crbp N=10"."""
    rec = cfg.MODEL.RECURRENT
    steps = f"{rec.GRAD} N={rec.TIMESTEPS}"
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_rfpn_backbone":
        levels = cfg.MODEL.RFPN.LEVELS
        return f"RFPN {levels[0]}-{levels[-1]}, {steps}"
    if cfg.MODEL.ROI_MASK_HEAD.NAME == "RecurrentMaskRCNNConvUpsampleHead":
        return f"recurrent mask head, {steps}"
    return "Panoptic FPN (feed-forward)"


def plan_from_configs(configs: Sequence[str]) -> List[Entry]:
    """A plan of whole-schedule runs of ``configs``, each tested against the first."""
    names = [os.path.splitext(os.path.basename(c))[0] for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"compare: config file names must be distinct, got {names}")
    labels = [describe(get_rpanoptic_cfg(c)) for c in configs]
    return [
        Entry(n, lbl, c, baseline=names[0] if i else "")
        for i, (n, lbl, c) in enumerate(zip(names, labels, configs))
    ]


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _step_seconds(metrics_json: str, fallback: float) -> float:
    """Median training-step time logged in a metrics.json (Detectron2 logs it from the 4th
    iteration on); ``fallback`` for runs too short to have it."""
    with open(metrics_json) as f:
        times = [json.loads(line).get("time") for line in f if line.strip()]
    times = [t for t in times if t is not None]
    return statistics.median(times) if times else fallback


@torch.no_grad()
def _inference_seconds(cfg, model, images: int = 20) -> float:
    """Median seconds per image (batch 1, eval mode, at TEST_TIMESTEPS) on the test set."""
    model.eval()
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    sync = torch.cuda.synchronize if cfg.MODEL.DEVICE.startswith("cuda") else (lambda: None)
    times = []
    for i, inputs in enumerate(loader):
        if i > images:
            break
        sync()
        start = time.perf_counter()
        model(inputs)
        sync()
        if i > 0:  # the first image warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _per_class(panoptic: Dict) -> Dict[str, float]:
    """The per-category PQ of a ``panoptic_seg`` result (``PQ/<category>``)."""
    return {k: v for k, v in panoptic.items() if k.startswith("PQ/")}


def _write_json(path: str, data: Dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def run_one(
    config_file: str,
    seed: int,
    output_dir: str,
    result_path: str,
    iters: int = 0,
    device: str = "",
    opts: Sequence[str] = (),
    *,
    fraction: float = 1.0,
    init_weights: str = "",
    name: str = "",
    label: str = "",
    grouping_category: str = "",
) -> Dict:
    """Train and measure one config with one seed; writes ``result_path`` and returns its dict.

    ``iters`` (0: the config's SOLVER.MAX_ITER) times ``fraction`` iterations are trained,
    starting from ``init_weights`` when given (else from scratch). With ``grouping_category``
    (a thing class of the test set), the result also holds the mask head's
    :func:`~rpanoptic.evaluation.grouping.instance_grouping` of that category.
    """
    opts = [*opts, "SEED", str(seed)]
    total = iters or get_rpanoptic_cfg(config_file, opts).SOLVER.MAX_ITER
    cfg = demo_config(config_file, output_dir, max(1, round(total * fraction)), device, opts)
    if init_weights:
        cfg.MODEL.WEIGHTS = init_weights
    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = train_and_evaluate(cfg, COUNTS)
    model = run["model"]
    result = {
        "name": name or os.path.splitext(os.path.basename(config_file))[0],
        "model": label or describe(cfg),
        "config": os.path.relpath(config_file),
        "opts": list(opts[:-2]),
        "init_from": init_weights,
        "seed": seed,
        "iters": cfg.SOLVER.MAX_ITER,
        "device": cfg.MODEL.DEVICE,
        "threads": torch.get_num_threads(),
        **{m: run["results"]["panoptic_seg"][m] for m in METRICS},
        **_per_class(run["results"]["panoptic_seg"]),
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_peak_mb": _peak_memory_mb(cfg.MODEL.DEVICE),
        "step_s": _step_seconds(
            os.path.join(output_dir, "metrics.json"), run["train_s"] / cfg.SOLVER.MAX_ITER
        ),
        "infer_img_s": _inference_seconds(cfg, model),
        "train_s": run["train_s"],
        "sweep": {
            str(t): {
                **{m: r["panoptic_seg"][m] for m in ("PQ", "PQ_th", "PQ_st")},
                **_per_class(r["panoptic_seg"]),
            }
            for t, r in run["sweep"].items()
        },
        "trained_timesteps": cfg.MODEL.RECURRENT.TIMESTEPS if has_recurrence(cfg) else 0,
        "diagnostics": logged_diagnostics(os.path.join(output_dir, "metrics.json")),
    }
    if grouping_category:
        standard = standard_dataset(cfg.DATASETS.TEST[0])
        result["grouping"] = instance_grouping(model, cfg, standard, grouping_category)
    _write_json(result_path, result)
    return result


def logged_diagnostics(metrics_json: str) -> Dict[str, List[List[float]]]:
    """The ``recurrent/*`` and ``params/*`` scalars of a metrics.json, as {key: [[iteration,
    value], ...]}: the contraction and learning of the recurrent layers during training."""
    series: Dict[str, List[List[float]]] = {}
    for record in read_metrics(metrics_json):
        for key, value in record.items():
            if key.startswith(("recurrent/", "params/")):
                series.setdefault(key, []).append([record["iteration"], value])
    return series


def result_file(results_dir: str, entry: Entry, seed: int) -> str:
    return os.path.join(results_dir, entry.name, f"seed{seed}.json")


def run_folder(output_dir: str, entry: Entry, seed: int) -> str:
    return os.path.join(output_dir, entry.name, f"seed{seed}")


# launch(entry, seed, folder, result_path, init_weights, threads) -> a running Popen
Launch = Callable[[Entry, int, str, str, str, int], subprocess.Popen]


def run_plan(
    plan: Sequence[Entry],
    seeds: Sequence[int],
    results_dir: str,
    output_dir: str,
    launch: Launch,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> List[Dict]:
    """Run every (entry, seed) of ``plan`` whose result file is missing, ``jobs`` at a time
    (each with cpu_count // jobs threads), seed by seed so that a comparison stopped early has
    every model for some seeds. Returns all results, in plan order within each seed.

    Raises RuntimeError naming the run and its log when a run fails; results already written
    are kept.
    """
    by_name = {e.name: e for e in plan}
    for e in plan:
        if e.init_from and e.init_from not in by_name:
            raise ValueError(f"compare: entry {e.name!r} starts from unknown {e.init_from!r}")
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    pending = [(e, s) for s in seeds for e in plan]

    def has_result(e, s):
        return os.path.isfile(result_file(results_dir, e, s))

    def checkpoint(e, s):
        return os.path.join(run_folder(output_dir, e, s), "model_final.pth")

    # A run that starts from another's weights needs its checkpoint: when it is missing, the
    # other run is trained again (its committed result file is left as it is).
    needed = {
        (e.init_from, s)
        for e, s in pending
        if e.init_from
        and not has_result(e, s)
        and not os.path.isfile(checkpoint(by_name[e.init_from], s))
    }
    queue = [(e, s) for e, s in pending if not has_result(e, s) or (e.name, s) in needed]
    running: Dict[Tuple[str, int], Tuple[subprocess.Popen, str]] = {}
    start = time.time()
    while queue or running:
        for (name, seed), (proc, folder) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[(name, seed)]
            if proc.returncode != 0:
                for other, _ in running.values():
                    other.wait()
                raise RuntimeError(
                    f"compare: {by_name[name].label} seed {seed} failed (exit "
                    f"{proc.returncode}); see {folder}/log.txt. Finished runs are kept: rerun "
                    "to resume."
                )
            log(f"  done: {by_name[name].label} seed {seed} ({(time.time() - start) / 60:.0f} min)")
        for entry, seed in list(queue):
            if len(running) >= max(1, jobs):
                break
            parent = entry.init_from
            if parent and ((parent, seed) in running or (by_name[parent], seed) in queue):
                continue
            queue.remove((entry, seed))
            folder = run_folder(output_dir, entry, seed)
            os.makedirs(folder, exist_ok=True)
            target = result_file(results_dir, entry, seed)
            if has_result(entry, seed):  # re-trained for its checkpoint only
                target = os.path.join(folder, "result.json")
            init = checkpoint(by_name[parent], seed) if parent else ""
            log(f"[start] {entry.label} seed {seed} -> {folder}")
            running[(entry.name, seed)] = (
                launch(entry, seed, folder, target, init, threads),
                folder,
            )
        if running:
            time.sleep(0.5)
    return [load_json(result_file(results_dir, e, s)) for e, s in pending if has_result(e, s)]


def load_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)
