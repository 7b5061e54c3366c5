"""Errors shared by the modules of mpidist."""


class UsageError(Exception):
    """Bad input that every rank detects alike (flags, configuration, missing files): the runtime
    prints one line on rank 0 and every rank exits with status 2."""


class AgreedEnd(Exception):
    """Raised on every rank alike once the ranks agreed that the run cannot go on: the runtime
    closes every trace with the message as its status, rank 0 prints it as one line, and every
    rank exits with ``exit_code`` (no MPI_Abort, no traceback)."""
    exit_code = 1


class Diverged(AgreedEnd):
    """Some rank's loss was not finite (:meth:`mpidist.runtime.Run.diverged_everywhere`)."""
    exit_code = 3


class CheckpointFailed(AgreedEnd):
    """A checkpoint could not be written on some rank (a full disk, an I/O error): nothing of it
    is kept, the previous checkpoint is intact (:meth:`mpidist.runtime.Run.save_checkpoint`)."""
    exit_code = 1
