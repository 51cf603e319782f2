"""clsbench: benchmark causal LLMs (classification head, instruction tuning) against encoders."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with the user's config or data: reported as one line, no traceback. ``fix``, where
    the message names one, holds the dataset settings it asks for (``{"delimiter": ";"}``), so that
    ``clsbench.check`` can apply it and go on to list the problems behind this one."""

    def __init__(self, message: str, fix: dict | None = None):
        super().__init__(message)
        self.fix = fix or {}
