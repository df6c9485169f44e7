"""transferkit: turn an ImageNet-pretrained CNN into a classifier for your own images.

    >>> import transferkit
    >>> run = transferkit.train("data", strategy="linear")      # doctest: +SKIP
    >>> model = transferkit.load(run.path)                       # doctest: +SKIP
    >>> model.predict(["a.jpg"])                                 # doctest: +SKIP
    >>> transferkit.serve(run.path, port=8000)                   # doctest: +SKIP
"""

__version__ = "0.1.0"

import sys  # noqa: E402
import types  # noqa: E402

from .errors import UserError  # noqa: E402

# Imported on first use (PEP 562), so that torch-free parts (ONNX Runtime prediction from
# `transferkit predict model.onnx`) work where torch is not installed.
_LAZY = {"train": "api", "doctor": "api", "load": "api", "evaluate": "api", "export": "api", "report": "api", "Run": "api",
         "Predictor": "prediction.torch_predictor", "TrainConfig": "config", "serve": "serving.server", "studio": "studio.server",
         "create_app": "serving.app"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package, whose API names stay the API's: importing the subpackage `doctor` (which the
    import system records as the attribute `transferkit.doctor`) must not replace the function
    `transferkit.doctor` (seen: "'module' object is not callable" once the doctor had run)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable through sys.modules and relative imports
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["train", "doctor", "load", "evaluate", "export", "report", "serve", "create_app", "Run", "Predictor", "TrainConfig",
           "UserError", "__version__"]
