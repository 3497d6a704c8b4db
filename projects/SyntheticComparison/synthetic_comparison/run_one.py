"""One run of a comparison: train one config with one seed and measure it (:func:`run_one`),
in its own process (what :func:`.compare.run_comparison` launches):

  python -m synthetic_comparison.run_one --config-file C --seed 0 --result R.json \
      --output-dir DIR ...

A process per run keeps each run's peak memory its own and its thread count set before torch
starts."""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

import torch
from detectron2.data import build_detection_test_loader
from synthetic_comparison.tables import CLOSURE, COUNTS, METRICS

from rpanoptic.analysis.grouping import instance_grouping
from rpanoptic.data.panoptic import standard_dataset
from rpanoptic.data.synthetic import KINDS, ensure_synthetic_dataset
from rpanoptic.data.synthetic_scene import SceneSpec, parse_scene
from rpanoptic.engine.demo import demo_config, train_and_evaluate
from rpanoptic.engine.setup import check_resumable, get_rpanoptic_cfg
from rpanoptic.evaluation.report import read_metrics
from rpanoptic.modeling.build import has_recurrence
from rpanoptic.utils import atomic_write, atomic_write_json, peak_rss_mb, provenance

from .plan import describe

__all__ = ["logged_diagnostics", "run_one"]


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


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
    :func:`~rpanoptic.analysis.grouping.instance_grouping` of that category.
    """
    opts = [*opts, "SEED", str(seed)]
    total = iters or get_rpanoptic_cfg(config_file, opts).SOLVER.MAX_ITER
    cfg = demo_config(config_file, output_dir, max(1, round(total * fraction)), device, opts)
    if init_weights:
        cfg.MODEL.WEIGHTS = init_weights
    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    resume = prepare_run_folder(cfg)
    run = train_and_evaluate(cfg, COUNTS, resume=resume)
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
        **run["results"].get("enclosure", {}),
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_peak_mb": _peak_memory_mb(cfg.MODEL.DEVICE),
        "step_s": _step_seconds(
            os.path.join(output_dir, "metrics.json"), run["train_s"] / cfg.SOLVER.MAX_ITER
        ),
        "infer_img_s": _inference_seconds(cfg, model),
        "train_s": run["train_s"],
        "resumed_at": run["start_iter"],
        "sweep": {
            str(t): {
                **{m: r["panoptic_seg"][m] for m in ("PQ", "PQ_th", "PQ_st")},
                **_per_class(r["panoptic_seg"]),
                **{m: r["enclosure"][m] for m in CLOSURE if m in r.get("enclosure", {})},
            }
            for t, r in run["sweep"].items()
        },
        "trained_timesteps": cfg.MODEL.RECURRENT.TIMESTEPS if has_recurrence(cfg) else 0,
        "diagnostics": logged_diagnostics(os.path.join(output_dir, "metrics.json")),
    }
    if grouping_category:
        standard = standard_dataset(cfg.DATASETS.TEST[0])
        result["grouping"] = instance_grouping(model, cfg, standard, grouping_category)
    result["provenance"] = provenance(cfg.MODEL.DEVICE)
    atomic_write_json(result_path, result, indent=2)
    return result


RUN_CONFIG = "run_config.yaml"


def prepare_run_folder(cfg) -> bool:
    """Decide whether the run in cfg.OUTPUT_DIR resumes, and make its folder ready.

    A run resumes when the folder holds a checkpoint and the ``run_config.yaml`` written when
    it started equals ``cfg`` (then the metrics logged after that checkpoint are dropped, since
    those iterations are trained again). Otherwise it starts from scratch: an earlier
    metrics.json is kept as ``metrics.previous.json`` rather than appended to. Returns True to
    resume.
    """
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    config_path, metrics = os.path.join(out, RUN_CONFIG), os.path.join(out, "metrics.json")
    text = cfg.dump()
    checkpoint = _last_checkpoint_iteration(out)
    same = False
    if os.path.isfile(config_path):
        with open(config_path) as f:
            same = f.read() == text
    if same and checkpoint is not None:
        check_resumable(cfg)
        if os.path.isfile(metrics):
            kept = [r for r in read_metrics(metrics) if r.get("iteration", -1) <= checkpoint]
            lines = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(metrics, lambda f: f.write(lines), binary=False)
        return True
    if os.path.isfile(metrics):
        os.replace(metrics, os.path.join(out, "metrics.previous.json"))
    if os.path.isfile(os.path.join(out, "last_checkpoint")):
        os.remove(os.path.join(out, "last_checkpoint"))  # a later resume must not pick it up
    atomic_write(config_path, lambda f: f.write(text), binary=False)
    return False


def _last_checkpoint_iteration(folder: str):
    """The iteration of the checkpoint named in ``folder``/last_checkpoint (Detectron2 names
    periodic checkpoints model_<iteration>.pth), or None when there is none to resume."""
    pointer = os.path.join(folder, "last_checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    stem = os.path.splitext(name)[0]
    if not os.path.isfile(os.path.join(folder, name)) or not stem.startswith("model_"):
        return None
    digits = stem[len("model_") :]
    return int(digits) if digits.isdigit() else None


def logged_diagnostics(metrics_json: str) -> Dict[str, List[List[float]]]:
    """The ``recurrent/*`` and ``params/*`` scalars of a metrics.json, as {key: [[iteration,
    value], ...]}: the contraction and learning of the recurrent layers during training."""
    series: Dict[str, List[List[float]]] = {}
    for record in read_metrics(metrics_json):
        for key, value in record.items():
            if key.startswith(("recurrent/", "params/")):
                series.setdefault(key, []).append([record["iteration"], value])
    return series


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", required=True, help="the result JSON to write")
    p.add_argument("--output-dir", required=True, help="the run's folder (checkpoints, logs)")
    p.add_argument("--iters", type=int, default=0, help="whole-schedule iterations (0: config)")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of them to train")
    p.add_argument("--init-weights", default="", help="start from these weights")
    p.add_argument("--device", default="")
    p.add_argument("--name", default="")
    p.add_argument("--label", default="")
    p.add_argument("--grouping-category", default="")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=50, help="synthetic validation images")
    p.add_argument("--size", type=int, default=SceneSpec.size, help="synthetic image size")
    p.add_argument("--kind", default="curves", choices=sorted(KINDS), help="which scenes")
    p.add_argument(
        "--scene",
        default="",
        help="synthetic scene fields, e.g. shape_touch=0,curves_behind=1 or curves=2:3 for a range "
        "(another dataset folder)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import rpanoptic  # noqa: F401  (registers rpanoptic's components and the synthetic datasets)

    args = parse_args(argv)
    spec = parse_scene(args.scene, args.size, KINDS[args.kind].spec)
    ensure_synthetic_dataset({"train": args.train, "val": args.val}, spec=spec)
    run_one(
        args.config_file,
        args.seed,
        args.output_dir,
        args.result,
        args.iters,
        args.device,
        args.opts,
        fraction=args.fraction,
        init_weights=args.init_weights,
        name=args.name,
        label=args.label,
        grouping_category=args.grouping_category,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
