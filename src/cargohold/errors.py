"""The error classes of cargohold: one hierarchy, branched on by class, never by message.

::

    CargoholdError                 exit 1 unless noted
     ├── NotFound                  the named thing does not exist
     ├── AlreadyExists             the named thing exists already
     ├── FailedPrecondition        the state does not allow this now (e.g. parent has children)
     │    └── IntegrityError       stored data does not match its digest or size
     ├── InvalidArgument           the command line or a call's arguments are malformed (exit 2)
     ├── MalformedData             data read (an archive, a layer, a stored document) is
     │                             malformed, damaged or hostile
     ├── Unavailable               locked or busy: the only retryable error
     └── Unsupported               this host, backend or format cannot do it

Messages read "subject value: problem"; ``hint`` says what to do about it. Domain errors
subclass these beside the code that raises them. Only ``cli/`` turns them into exit codes and
text; the library never prints or exits.
"""

from __future__ import annotations


class CargoholdError(Exception):
    """Base of every error cargohold raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFound(CargoholdError):
    """The named object does not exist (in this namespace)."""


class AlreadyExists(CargoholdError):
    """An object with this name or digest exists already."""


class FailedPrecondition(CargoholdError):
    """The object is in a state that does not allow the operation."""


class IntegrityError(FailedPrecondition):
    """Data does not match its expected digest or size."""


class InvalidArgument(CargoholdError):
    """The caller passed something malformed: a usage error, exit 2."""

    exit_code = 2


class MalformedData(CargoholdError):
    """Data being read is malformed, damaged or hostile: an archive, a layer, a JSON document.

    Not a usage error (exit 1, not 2): the command was right, the bytes it was given are not.
    """


class Unavailable(CargoholdError):
    """A lock is held or a resource is busy; retrying later may succeed."""


class Unsupported(CargoholdError):
    """This host, backend or format cannot do what was asked."""
