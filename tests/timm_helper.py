"""Importing timm in the tests (ENVIRONMENT.md, way (a)).

timm imports torchvision. The torchvision that matches torch 2.13 exists only as a CUDA build
whose C extension cannot load beside the CPU torch; its import then fails registering fake
kernels for two op schemas it expects the extension to define. When (and only when) that
happens, we declare those two schemas first. No torchvision op ever runs in attncc's tests, and
attncc itself never imports torchvision.
"""
import torch

_LIB = None


def _import_torchvision():
    global _LIB
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        _LIB = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401


def import_timm():
    """The timm package (a test dependency: pip install -e '.[test]')."""
    _import_torchvision()
    import timm
    return timm
