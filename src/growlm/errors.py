"""User-facing errors.

A `GrowlmError` is a problem with the user's input (recipe, data, checkpoint, CLI
arguments). The CLI prints its message on one line and exits non-zero, without a
traceback. Anything else escaping is a bug in growlm and keeps its traceback.
"""


class GrowlmError(Exception):
    """Bad input: the message names the problem and what is allowed."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
