"""Export a Panoptic FPN model (recurrent or not) at a fixed number of inference steps: as a
``torch.export`` program (``.pt2``), as ONNX converted from that program, or as TorchScript
traced from the eager model.

Every form maps one resized image tensor (3, H, W), in the model's input format, to the
network's raw outputs, five tensors in this order::

    boxes (R, 4), scores (R,), classes (R,), mask probabilities (R, 1, M, M), sem_seg logits
    (S, Hp, Wp)

for an image of size (H, W) (the size after the test-time resize; Hp, Wp is that size padded
to the backbone's divisibility). The post-processing that follows (pasting the masks at the
original size and combining things and stuff into the panoptic segmentation) stays in Python:
:func:`postprocess` turns those tensors into the same output dict as the eager model's.

Steps and halting: the recurrence is unrolled, so an exported model always runs the step
count it was exported with (MODEL.RECURRENT.TEST_TIMESTEPS, else TIMESTEPS). Halting
(HALT_TOL > 0) stops each sample at a step that depends on its data, which neither a trace
nor an exported graph keeps: every export refuses it. Export at a fixed count instead, e.g.
the mean steps that halting took (``tools/predict.py`` prints it). A recurrence's finiteness
check (MODEL.RECURRENT.CHECK_FINITE) is a branch on the data and is left out of an export.

The three forms:

- ``torch.export`` (:func:`export_program`, :func:`load_program`): the whole network
  (backbone, RFPN, semantic head, RPN, box head, NMS, (recurrent) mask head) as one graph, in
  which the image's height and width and the numbers of proposals and detections are symbolic
  sizes: one program serves every image size and content. The program checks its input: each
  side must leave the coarsest FPN level (p6) more than one cell, i.e. be over 64 pixels with
  the usual divisibility of 32. Detectron2's inference code does not export as it is: it pads
  through a size tensor, branches on the data (``if not valid.all()``, the size test in
  ``batched_nms``) and takes ``len()`` of tensors whose length depends on the data, which a
  graph cannot turn into a Python int. :class:`ExportPanoptic` runs the same modules with that
  glue written on tensors. It always applies the filters that Detectron2 applies only when
  they remove something (same result), and runs batched NMS with the coordinate-offset trick
  that ``torchvision`` uses under tracing and, on a CPU, for up to 1,000 boxes (above that
  the eager model runs one NMS per class, which keeps the same boxes unless the rounding of
  the offsets decides a tie). Loading a program parses its symbolic shapes, which takes
  longer than loading the TorchScript file.
- ONNX (:func:`export_onnx`, :func:`load_onnx`): that program converted by
  ``torch.onnx.export(..., dynamo=True)``, with the same symbolic sizes; it needs the ``onnx``
  and ``onnxscript`` packages to export and ``onnxruntime`` to run (pinned in
  requirements-dev.txt). ONNX Runtime's kernels round differently from PyTorch's, so the
  outputs differ in their last digits (the tests allow 1e-3) and a pixel whose class is a
  near tie can differ.
- TorchScript (:func:`export_traced`, :func:`load_exported`): a trace of the eager model
  through :class:`RawPanoptic`. It runs images of any size, but records one path through
  every data-dependent branch. PyTorch deprecates ``torch.jit`` in favour of
  ``torch.export``; this form is kept while it works.
"""

import contextlib
import os
import warnings
from typing import Callable, Iterator

import torch
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from ..modeling import recurrent_layers
from ..utils import atomic_write
from .panoptic_graph import OUTPUT_NAMES, ExportPanoptic, Raw, RawPanoptic

__all__ = [
    "ExportPanoptic",
    "RawPanoptic",
    "export_onnx",
    "export_program",
    "export_traced",
    "load_exported",
    "load_onnx",
    "load_program",
    "postprocess",
]

ONNX_PACKAGES = "onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 (see requirements-dev.txt)"


def _refuse_halting(model: nn.Module) -> None:
    halting = [name for name, rec in recurrent_layers(model).items() if rec.halt_tol > 0]
    if halting:
        raise ValueError(
            f"Cannot export with halting (HALT_TOL > 0 in {', '.join(halting)}): the steps each "
            "sample takes depend on its data and an export keeps one path. Export with "
            "MODEL.RECURRENT.HALT_TOL 0 and TEST_TIMESTEPS set to the step count wanted."
        )


def _fake_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return dets.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)


@contextlib.contextmanager
def _nms_may_keep_none() -> Iterator[None]:
    """Inside the block, the shape function of ``torchvision::nms`` lets NMS keep no box. The
    one torchvision registers draws the number of kept boxes as at least 2 (the default bound
    of the deprecated ``create_unbacked_symint`` it calls), and the exported program would
    then assert it: an image with one detection or none would fail."""
    library = torch.library.Library("torchvision", "FRAGMENT")
    try:
        torch.library.register_fake("torchvision::nms", _fake_nms, lib=library)
        yield
    finally:
        library._destroy()


@contextlib.contextmanager
def _exporting(model: nn.Module) -> Iterator[None]:
    """The model in eval mode, under ``torch.no_grad``, with every recurrence's finiteness
    check off (a branch on the data; restored afterwards) and without the warnings that the
    export gives and the user can do nothing about."""
    checks = [(rec, rec.check_finite) for rec in recurrent_layers(model).values()]
    was_training = model.training
    model.eval()
    try:
        for rec, _ in checks:
            rec.check_finite = False
        with torch.no_grad(), warnings.catch_warnings():
            # Detectron2's anchor generator calls torch.meshgrid without `indexing`; the
            # default it gets is the one it wants.
            warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")
            # A recurrence keeps its last step counts in a plain attribute (``steps``) for
            # inspection; the export warns that it is no buffer. It is no output either.
            warnings.filterwarnings(
                "ignore", r"The tensor attributes? .* (was|were) assigned during export"
            )
            yield
    finally:
        for rec, check in checks:
            rec.check_finite = check
        model.train(was_training)


def _check_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")


def _unreadable(path: str, what: str, error: Exception) -> ValueError:
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    return ValueError(f"{path} is not {what} ({type(error).__name__}: {detail}).")


def export_traced(model: nn.Module, image: torch.Tensor, path: str) -> torch.jit.ScriptModule:
    """Trace ``model`` (a Panoptic FPN, put in eval mode) on ``image`` (3, H, W) and save the
    TorchScript module to ``path``; returns it.

    Raises ValueError when a recurrent layer halts (its step count would depend on the data).
    """
    _refuse_halting(model)
    model.eval()
    wrapper = RawPanoptic(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # data-dependent Python branches (e.g. the non-finite check) are recorded as taken
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch.jit.trace, .script (torchvision's batched NMS under a trace) and .save warn that
        # TorchScript is deprecated. This form is kept on purpose, with export_program as its
        # replacement, so the warning asks nothing of the user.
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")  # _exporting
        traced = torch.jit.trace(wrapper, (image,), check_trace=False)
        atomic_write(path, lambda f: torch.jit.save(traced, f))
    return traced


def load_exported(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a module written by :func:`export_traced` (TorchScript: no Python code is run)."""
    _check_file(path, "exported model")
    with warnings.catch_warnings():
        # torch.jit.load's deprecation warning: see export_traced
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        return torch.jit.load(path, map_location=device)


def _export(model: nn.Module, image: torch.Tensor) -> torch.export.ExportedProgram:
    _refuse_halting(model)
    wrapper = ExportPanoptic(model).eval()
    sides = {1: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO}
    with _exporting(model), _nms_may_keep_none():
        program = torch.export.export(wrapper, (image,), dynamic_shapes=(sides,), strict=False)
        # The ATen graph: the training-level graph keeps autocast regions (the recurrence runs
        # in float32 under autocast(enabled=False)) as nodes that do not load back.
        return program.run_decompositions()


def export_program(
    model: nn.Module, image: torch.Tensor, path: str
) -> torch.export.ExportedProgram:
    """Export ``model`` (a Panoptic FPN; exported in eval mode) with ``torch.export`` through
    :class:`ExportPanoptic`, ``image`` (3, H, W) as the example (images of other sizes run
    too; see the module docstring), and save the program to ``path`` (``.pt2``, by
    :func:`torch.export.save`); returns it.

    Raises ValueError when a recurrent layer halts (its step count would depend on the data)
    or when the model is not one :class:`ExportPanoptic` covers.
    """
    program = _export(model, image)
    atomic_write(path, lambda f: torch.export.save(program, f))
    return program


def load_program(path: str) -> Callable[[torch.Tensor], Raw]:
    """The module of a program written by :func:`export_program`: call it on a resized image
    (3, H, W) for the five raw tensors. :func:`torch.export.load` gives the program itself.

    Raises FileNotFoundError for a missing file, ValueError naming the file for one that is
    not such a program."""
    _check_file(path, "exported program")
    try:
        program = torch.export.load(path)
    except Exception as error:  # a damaged archive fails in zipfile, pickle or the verifier
        what = "a torch.export program (.pt2) written by export_program"
        raise _unreadable(path, what, error) from error
    return program.module()


def export_onnx(model: nn.Module, image: torch.Tensor, path: str) -> None:
    """Export ``model`` as :func:`export_program` does and convert the program to ONNX at
    ``path`` (``torch.onnx.export(..., dynamo=True)``; input ``image``, outputs ``boxes``,
    ``scores``, ``classes``, ``mask_probs``, ``sem_seg``; height and width symbolic).

    Raises ValueError as :func:`export_program` does, ImportError without ``onnx`` and
    ``onnxscript``."""
    _refuse_halting(model)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs {ONNX_PACKAGES}: {error}") from error
    program = _export(model, image)
    with _nms_may_keep_none(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")
        converted = torch.onnx.export(
            program,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamo=True,
            verbose=False,
        )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        converted.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_onnx(path: str, providers=("CPUExecutionProvider",)) -> Callable[[torch.Tensor], Raw]:
    """A function of a resized image tensor (3, H, W) to the five raw tensors (as torch
    tensors, on the CPU), running the ONNX model at ``path`` with ONNX Runtime.

    Raises FileNotFoundError for a missing file, ValueError naming the file for one that ONNX
    Runtime cannot read, ImportError without ``onnxruntime``."""
    _check_file(path, "ONNX model")
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"Running an ONNX export needs {ONNX_PACKAGES}: {error}") from error
    try:
        session = onnxruntime.InferenceSession(path, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own exception types
        raise _unreadable(path, "an ONNX model that ONNX Runtime can load", error) from error
    name = session.get_inputs()[0].name

    def run(image: torch.Tensor) -> Raw:
        outputs = session.run(None, {name: image.detach().cpu().float().numpy()})
        return tuple(torch.from_numpy(output) for output in outputs)

    return run


def postprocess(raw: Raw, image_size, height: int, width: int, cfg) -> dict:
    """The eager model's output dict (``sem_seg``, ``instances``, ``panoptic_seg``) from the
    exported model's raw outputs for an image resized to ``image_size`` (h, w) from its
    original ``height`` x ``width``; the combination thresholds come from ``cfg``."""
    boxes, scores, classes, masks, sem_seg = raw
    found = Instances(tuple(image_size))
    found.pred_boxes = Boxes(boxes)
    found.scores = scores
    found.pred_classes = classes
    found.pred_masks = masks
    sem = sem_seg_postprocess(sem_seg, tuple(image_size), height, width)
    detections = detector_postprocess(found, height, width)
    combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
    panoptic = combine_semantic_and_instance_outputs(
        detections,
        sem.argmax(dim=0),
        combine.OVERLAP_THRESH,
        combine.STUFF_AREA_LIMIT,
        combine.INSTANCES_CONFIDENCE_THRESH,
    )
    return {"sem_seg": sem, "instances": detections, "panoptic_seg": panoptic}
