"""User-facing error type: one line naming the file/field and what was expected.

The CLI catches `TrtGptError` and prints its message alone (no traceback) with exit code 2.
"""


class TrtGptError(Exception):
    """An error caused by the user's input, reported as a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
