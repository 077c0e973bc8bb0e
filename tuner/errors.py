"""The one error hierarchy of the tuner.

Library code raises these; only the CLI turns them into exit codes and one-line
messages. ``UsageError`` subclasses mean "the user asked for something invalid"
(exit code 2); everything else is a runtime failure (exit code 1).
"""

from __future__ import annotations


class TunerError(Exception):
    """Root of every error the tuner raises on purpose."""

    exit_code = 1


class UsageError(TunerError):
    """The request itself is invalid: a bad option, file, name or value."""

    exit_code = 2


class SpaceError(UsageError):
    """A search-space file is malformed or breaks a rule."""


class DataError(UsageError):
    """A dataset cannot be loaded or is unusable for the task.

    ``source`` is the data file or function at fault, when there is one, and ``problem``
    what is wrong with it. The message names the source as the command line gives it,
    ``--data SOURCE: problem``; a search space, which gives it as ``task.data``, names
    it its own way from the two.
    """

    def __init__(self, problem: str, source: str | None = None) -> None:
        super().__init__(problem if source is None else f"--data {source}: {problem}")
        self.problem = problem
        self.source = source

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str | None]]:
        return type(self), (self.problem, self.source)  # both survive a worker's pickle


class StudyNotFoundError(UsageError):
    """A study named on the command line does not exist in the storage."""


class StudyMismatchError(UsageError):
    """Resuming a study with a search space other than the one it was created with."""


class StorageError(TunerError):
    """The study database cannot be opened, reached or written."""


class StorageUnavailable(StorageError):
    """The study database did not answer (a lost connection, a lock held too long):
    waiting and trying again may help, unlike for a write the data itself refuses."""


class TrialFailed(TunerError, RuntimeError):
    """One trial cannot go on (code of yours raised, or returned what it must not): that
    trial fails, with this message recorded on it, and the study goes on."""
