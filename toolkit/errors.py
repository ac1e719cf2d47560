"""The one error type for user mistakes. The CLI prints it as one line and exits 2; anything else is a bug."""


class LwdeployError(Exception):
    """A mistake in what the user asked for: says what was wrong and what to do instead."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message
