"""Errors shared by the modules of mpidist."""


class UsageError(Exception):
    """Bad input that every rank detects alike (flags, configuration, missing files): the runtime
    prints one line on rank 0 and every rank exits with status 2."""


class Diverged(Exception):
    """Raised on every rank alike once the ranks agreed that some rank's loss was not finite
    (:meth:`mpidist.runtime.Run.diverged_everywhere`): the run ends with exit status 3."""
