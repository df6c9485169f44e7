"""Exception types. A `UserError` is a mistake the user can fix: the CLI prints it as one line."""


class UserError(Exception):
    """Bad input or option: printed as a one-line message, never as a traceback."""


class ImageDecodeError(Exception):
    """An image file that cannot be used; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
