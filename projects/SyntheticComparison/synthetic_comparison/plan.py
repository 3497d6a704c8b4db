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
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from rpanoptic.data.synthetic_scene import SceneSpec
from rpanoptic.engine.setup import get_rpanoptic_cfg
from rpanoptic.modeling.build import OUR_NAMES

from .tables import COUNTS, summarize, write_comparison

# The project folder: what a run process needs on its path to import this package.
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = [
    "COUNTS",
    "DEFAULT_PLAN",
    "ENCLOSURE_PLAN",
    "PLANS",
    "Entry",
    "describe",
    "plan_from_configs",
    "launcher",
    "report_existing",
    "run_comparison",
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


_ENC = "configs/Synthetic/Enclosure/"
# The enclosure scenes (``--kind enclosure``): where the answer needs the whole loop.
ENCLOSURE_PLAN: List[Entry] = [
    Entry("ff", "feed-forward", _ENC + "panoptic_fpn_R_18.yaml", baseline=""),
    Entry(
        "ff_wide",
        "feed-forward, 96 FPN channels (the RFPN's FLOPs)",
        _ENC + "panoptic_fpn_R_18_wide.yaml",
    ),
    Entry(
        "rfpn_bptt3",
        "RFPN, BPTT N=3 (memory-limited)",
        _ENC + "panoptic_rfpn_R_18_crbp.yaml",
        ("MODEL.RECURRENT.GRAD", "bptt", "MODEL.RECURRENT.TIMESTEPS", "3"),
    ),
    Entry(
        "rfpn_bptt10",
        "RFPN, BPTT N=10",
        _ENC + "panoptic_rfpn_R_18_crbp.yaml",
        ("MODEL.RECURRENT.GRAD", "bptt"),
    ),
    Entry("rfpn_crbp10", "RFPN, C-RBP N=10", _ENC + "panoptic_rfpn_R_18_crbp.yaml"),
    Entry(
        "rmask_crbp10", "recurrent mask head, C-RBP N=10", _ENC + "panoptic_rmask_R_18_crbp.yaml"
    ),
]
PLANS = {"curves": DEFAULT_PLAN, "enclosure": ENCLOSURE_PLAN}


def describe(cfg) -> str:
    """A short name of what a config trains, e.g. "RFPN p3-p5, crbp N=10"."""
    rec = cfg.MODEL.RECURRENT
    steps = f"{rec.GRAD} N={rec.TIMESTEPS}"
    if cfg.MODEL.BACKBONE.NAME == OUR_NAMES[0]:
        levels = cfg.MODEL.RFPN.LEVELS
        return f"RFPN {levels[0]}-{levels[-1]}, {steps}"
    if cfg.MODEL.ROI_MASK_HEAD.NAME == OUR_NAMES[1]:
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
    running: Dict[Tuple[str, int], Tuple[subprocess.Popen, str, float]] = {}
    while queue or running:
        for (name, seed), (proc, folder, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[(name, seed)]
            if proc.returncode != 0:
                for other, _, _ in running.values():
                    other.wait()
                raise RuntimeError(
                    f"compare: {by_name[name].label} seed {seed} failed (exit "
                    f"{proc.returncode}); see {folder}/log.txt. Finished runs are kept: rerun "
                    "to resume."
                )
            minutes = (time.time() - started) / 60
            log(f"  done: {by_name[name].label} seed {seed} ({minutes:.0f} min)")
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
                time.time(),
            )
        if running:
            time.sleep(0.5)
    return [load_json(result_file(results_dir, e, s)) for e, s in pending if has_result(e, s)]


def launcher(
    iters: int = 0,
    device: str = "",
    counts: Dict[str, int] = None,
    size: int = 0,
    grouping_category: str = "",
    opts: Sequence[str] = (),
    cwd: str = ".",
    kind: str = "curves",
    scene: str = "",
) -> Launch:
    """The :data:`Launch` that starts each run as ``python -m synthetic_comparison.run_one``
    with ``threads`` OpenMP/MKL threads, logging to ``<folder>/log.txt``."""
    counts = counts or {"train": 400, "val": 50}

    def launch(entry, seed, folder, result, init, threads):
        cmd = [sys.executable, "-m", "synthetic_comparison.run_one", "--config-file", entry.config]
        cmd += ["--seed", str(seed), "--result", result, "--fraction", str(entry.fraction)]
        cmd += ["--init-weights", init, "--name", entry.name, "--label", entry.label]
        cmd += ["--grouping-category", grouping_category]
        cmd += ["--iters", str(iters), "--device", device, "--output-dir", folder]
        cmd += ["--train", str(counts["train"]), "--val", str(counts["val"])]
        cmd += ["--size", str(size or SceneSpec.size), "--kind", kind, "--scene", scene]
        cmd += [*entry.opts, *opts]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROJECT, env.get("PYTHONPATH")]))
        with open(os.path.join(folder, "log.txt"), "a") as log:  # a resumed run appends
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    return launch


def run_comparison(
    plan: Sequence[Entry],
    seeds: Sequence[int],
    results_dir: str,
    output_dir: str,
    launch: Launch,
    jobs: int = 1,
    tested: Sequence[str] = ("PQ", "PQ_th"),
    log: Callable[[str], None] = print,
) -> Dict[str, str]:
    """Run the missing runs of ``plan`` x ``seeds`` (:func:`run_plan`), then write the tables
    and plots of every result (:func:`write_comparison`, paired tests of the ``tested``
    metrics against each entry's baseline). Returns {file name: path}."""
    results = run_plan(plan, seeds, results_dir, output_dir, launch, jobs=jobs, log=log)
    for r in results:
        log(
            f"  {r['model']} seed {r['seed']}: PQ {r['PQ']:.1f} (things {r['PQ_th']:.1f}, "
            f"stuff {r['PQ_st']:.1f}), {r['train_s'] / 60:.1f} min"
        )
    baselines = {e.name: e.baseline for e in plan}
    return write_comparison(results, results_dir, baselines, tuple(tested))


def report_existing(
    plan: Sequence[Entry],
    seeds: Sequence[int],
    results_dir: str,
    tested: Sequence[str] = ("PQ", "PQ_th"),
) -> Tuple[Dict[str, str], List[str]]:
    """Write the tables and plots of the result files of ``plan`` x ``seeds`` that exist
    (seed by seed, plan order), training nothing. Returns ({file name: path}, the
    "<entry> seed <k>" runs still missing)."""
    results, missing = [], []
    for s in seeds:
        for e in plan:
            path = result_file(results_dir, e, s)
            if os.path.isfile(path):
                results.append(load_json(path))
            else:
                missing.append(f"{e.name} seed {s}")
    if not results:
        raise RuntimeError(f"no result file under {results_dir} for this plan and these seeds.")
    baselines = {e.name: e.baseline for e in plan}
    return write_comparison(results, results_dir, baselines, tuple(tested)), missing


def load_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)
