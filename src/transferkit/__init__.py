"""transferkit: turn an ImageNet-pretrained CNN into a classifier for your own images.

    >>> import transferkit
    >>> run = transferkit.train("data", strategy="linear")      # doctest: +SKIP
    >>> model = transferkit.load(run.path)                       # doctest: +SKIP
    >>> model.predict(["a.jpg"])                                 # doctest: +SKIP
    >>> transferkit.serve(run.path, port=8000)                   # doctest: +SKIP
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

# Imported on first use (PEP 562), so that torch-free parts (ONNX Runtime prediction from
# `transferkit predict model.onnx`) work where torch is not installed.
_LAZY = {"train": "api", "doctor": "api", "load": "api", "evaluate": "api", "export": "api", "report": "api", "Run": "api",
         "Predictor": "prediction.torch_predictor", "TrainConfig": "config", "serve": "serving.server",
         "create_app": "serving.app"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["train", "doctor", "load", "evaluate", "export", "report", "serve", "create_app", "Run", "Predictor", "TrainConfig",
           "UserError", "__version__"]
