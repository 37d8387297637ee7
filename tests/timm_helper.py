"""Importing timm and open_clip in the tests (ENVIRONMENT.md, way (a)): both import
torchvision, which attncc.demo.import_torchvision loads beside the CPU torch (its docstring
says how). No torchvision op ever runs in attncc's tests."""
from attncc.demo import import_torchvision


def import_timm():
    """The timm package (a test dependency: pip install -e '.[test]')."""
    import_torchvision()
    import timm
    return timm


def import_open_clip():
    """The open_clip package (a test dependency: pip install -e '.[test]')."""
    import_torchvision()
    import open_clip
    return open_clip
