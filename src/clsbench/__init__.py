"""clsbench: benchmark causal LLMs (classification head, instruction tuning) against encoders."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with the user's config or data: reported as one line, no traceback."""
