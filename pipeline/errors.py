"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class EdgepipeError(Exception):
    """A problem with the user's input or environment, with the fix in the message.

    Raise it as ``EdgepipeError("what is wrong", fix="what to do")``; the CLI prints
    ``Error: what is wrong. Fix: what to do`` with no traceback.
    """

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        self.message = message.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}. Fix: {self.fix.rstrip('.')}."
        return f"{self.message}."
