"""Print the environment rpanoptic runs in, and fail clearly when a piece is missing.

Usage: ``python -m rpanoptic.env``
"""

import importlib
import sys


def collect():
    """Return a list of (name, value, ok) rows describing the environment."""
    rows = [("python", sys.version.split()[0], True)]
    for mod in ("torch", "torchvision", "detectron2", "fvcore", "pycocotools", "panopticapi"):
        try:
            m = importlib.import_module(mod)
            rows.append((mod, getattr(m, "__version__", "installed"), True))
        except Exception as e:  # noqa: BLE001 - report any import failure as-is
            rows.append((mod, f"MISSING ({type(e).__name__}: {e})", False))
    try:
        from detectron2 import _C  # noqa: F401

        rows.append(("detectron2._C", "present", True))
    except Exception:  # noqa: BLE001
        # Optional: Panoptic FPN needs none of its ops (torchvision provides ROIAlign and NMS).
        rows.append(("detectron2._C", "absent (not needed: torchvision ops are used)", True))
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("cuda available", f"{cuda} ({torch.cuda.device_count()} devices)", True))
    except Exception:  # noqa: BLE001
        pass
    return rows


def main():
    rows = collect()
    width = max(len(r[0]) for r in rows)
    for name, value, _ in rows:
        print(f"{name:<{width}}  {value}")
    missing = [name for name, _, ok in rows if not ok]
    if missing:
        print(
            f"\nrpanoptic: missing {', '.join(missing)}. Run `make test` (or `make env`) to build "
            ".venv, or see README 'Installation'.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
