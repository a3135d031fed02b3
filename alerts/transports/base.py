"""What every transport implements, and the one error type the delivery task understands."""

from __future__ import annotations


class TransportError(Exception):
    """A delivery that did not happen.

    ``permanent``: retrying cannot help (a refused recipient, an invalid URL); the delivery is
    recorded as failed at once. Otherwise it is retried with backoff.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __str__(self) -> str:
        return self.message


class Transport:
    """Sends one message to the destination ``target`` (a channel's decrypted target)."""

    def __init__(self, target: str) -> None:
        self.target = target

    @classmethod
    def validate_target(cls, target: str) -> str:
        """The cleaned target, or ValueError saying what is wrong with it (used by the admin)."""
        target = target.strip()
        if not target:
            raise ValueError("enter a target")
        return target

    def send(self, subject: str, body: str, html: str | None = None) -> None:
        """Deliver, or raise TransportError. Must finish well within the delivery lease."""
        raise NotImplementedError
