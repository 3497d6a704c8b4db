"""Instruments for tests and benchmarks: the memory an autograd graph keeps for backward, and
the host synchronisations a piece of code makes.

:class:`SavedTensorMeter` installs ``torch.autograd.graph.saved_tensors_hooks`` and tracks every
tensor that an operation saves for backward. Graphs that are built and freed inside the
measured region (e.g. a recomputation) are not counted: only what is still referenced by a
live graph when :meth:`SavedTensorMeter.bytes` is called. Storages are counted once however
many times they are saved, and parameters are left out (they exist with or without a graph).
"""

import weakref
from typing import Iterable

import torch

__all__ = ["SavedTensorMeter", "HostSyncCounter"]


class _Saved:
    __slots__ = ("tensor", "storage", "nbytes", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        try:
            storage = tensor.untyped_storage()
            self.storage, self.nbytes = storage.data_ptr(), storage.nbytes()
        except RuntimeError:  # forward mode's zero tangents have no storage, take no memory
            self.storage, self.nbytes = None, 0


class SavedTensorMeter:
    """Context manager: ``with SavedTensorMeter(model.parameters()) as m: loss = model(x)``.

    Then ``m.bytes()`` is the size of the unique non-parameter storages that the live graph
    saved for backward, and ``m.count()`` how many tensors it saved.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._live: "weakref.WeakSet[_Saved]" = weakref.WeakSet()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        # Keep a detached view: holding the tensor itself would make a reference cycle with its
        # own grad_fn when an operation saves its output, keeping freed graphs alive.
        saved = _Saved(tensor.detach())
        self._live.add(saved)
        return saved

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def count(self) -> int:
        return len(self._live)

    def bytes(self) -> int:
        storages = {}
        for saved in list(self._live):
            if saved.storage is not None and saved.storage not in self._exclude:
                storages[saved.storage] = saved.nbytes
        return sum(storages.values())


class HostSyncCounter:
    """Context manager counting Python-level calls that synchronise a tensor with the host
    (``Tensor.item``, ``__bool__``, ``__int__``, ``__float__``, ``tolist``, ``cpu``, ``numpy``),
    by patching those methods while it is active: ``with HostSyncCounter() as c: ...; c.count``.
    """

    METHODS = ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy")

    def __enter__(self) -> "HostSyncCounter":
        self.count, self._saved = 0, {}
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(t, *a, _original=original, **k):
                self.count += 1
                return _original(t, *a, **k)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
