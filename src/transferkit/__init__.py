"""transferkit: turn an ImageNet-pretrained CNN into a classifier for your own images.

    >>> import transferkit
    >>> run = transferkit.train("data", strategy="linear")      # doctest: +SKIP
    >>> model = transferkit.load(run.path)                       # doctest: +SKIP
    >>> model.predict(["a.jpg"])                                 # doctest: +SKIP
"""

__version__ = "0.1.0"

from .api import Run, evaluate, load, train  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .errors import UserError  # noqa: E402
from .predict import Predictor  # noqa: E402

__all__ = ["train", "load", "evaluate", "Run", "Predictor", "TrainConfig", "UserError", "__version__"]
