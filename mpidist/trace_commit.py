"""Crash-consistent updates of one HDF5 file: :class:`CommittedFile`.

HDF5 does not order its writes: a process killed while it has a file open for writing (SIGKILL in
the middle of a flush, ``MPI_Abort``, a full disk, an I/O error) can leave metadata half updated,
and HDF5 1.10+ marks a file open for writing in its superblock, so that HDF5 refuses to open a file
whose writer died ("already open for write (may use h5clear)"). Here the file at ``path`` is
therefore never opened for writing at all. It only ever changes by ``rename``, which replaces it
whole, atomically, with a closed and complete file:

1. changes are made to a private *shadow* copy (``.rank<k>.h5.next``, see
   :func:`mpidist.trace_format.shadow_path`), opened, changed and closed by HDF5;
2. the committed file gets a second name (a hard link), the shadow is renamed over ``path`` (the
   commit point), and the second name becomes the next shadow.

So ``path`` is at every instant either the file of the previous commit or that of this one, both
closed by HDF5; a process killed anywhere leaves one of them. The old committed file, which lacks
only this commit's changes, is the next shadow: the next commit applies this commit's changes to
it first, then its own (two flushes' rows are written, never the whole file). A shadow that is
missing, damaged by a failed write, or held open by a reader that took HDF5's file lock (h5py's
default, HDF5's tools) is replaced by a fresh copy of ``path`` (the whole file, once), so a
locking reader never blocks a commit and never sees its file change. Readers that take no lock
(mpidist's own) may see the file they opened change under them when a read lasts longer than the
time between two commits; :func:`mpidist.trace_reader.read_rank` sees that and reads again.

What it costs and what it survives is measured by ``tools/bench_trace.py`` and
``tests/programs/trace_crash.py`` (tools/results/reliability/trace_crash.md). Without ``fsync``,
the file survives the death of the process, not a power cut of the machine.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import re
import shutil
import sys

import h5py

from .trace_format import LIBVER, TraceError, previous_path, shadow_path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class CommitFailed(Exception):
    """A commit that did not happen (``path`` unchanged), with one line saying why."""

    @classmethod
    def of(cls, e: BaseException) -> "CommitFailed":
        if isinstance(e, CommitFailed):
            return e
        text = str(e)
        why = re.search(r"error message = '([^']*)'", text)  # libhdf5's own words for errno
        first = text.splitlines()[0] if text else repr(e)
        if why:
            first = re.sub(r"\s*\(file write failed.*$|\s*\(file read failed.*$", "", first)
            first = f"{first} ({why.group(1)})"
        return cls(f"{type(e).__name__}: {first}")


def _nbytes(op) -> int:
    """The bytes of the rows in an op (for the free-space check)."""
    return sum(getattr(x, "nbytes", 0) for x in op[1:] if hasattr(x, "nbytes"))


def _room(path: str, nbytes: int) -> None:
    """Raise ENOSPC before writing when the file system has less than ``nbytes`` free (other
    writers may still fill it meanwhile: the writes' own errors are handled too)."""
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return
    if st.f_bavail * st.f_frsize < nbytes:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (needs {nbytes} bytes, "
                                    f"{st.f_bavail * st.f_frsize} free)")


@contextlib.contextmanager
def _quiet_hdf5():
    """While a failed write's HDF5 objects are closed: their errors (a full disk again) are
    already reported by the failure itself, not printed as "Exception ignored" tracebacks."""
    hook = sys.unraisablehook

    def drop(u):
        if not (u.exc_type is not None and issubclass(u.exc_type, (OSError, RuntimeError,
                                                                   ValueError, KeyError))):
            hook(u)
    sys.unraisablehook = drop
    try:
        yield
    finally:
        sys.unraisablehook = hook


class CommittedFile:
    """One HDF5 file changed only by atomic commits. ``apply(h5file, op)`` performs one change
    (an op is whatever the caller queues: rows to append, attributes to set); the same ops are
    applied, in the same order, to both files of the pair, so both hold the same content.
    ``check(h5file, ops)``, given the shadow reopened read-only after the ops were written and
    the file closed, raises if what they wrote is not there (HDF5 can fail to write without
    raising, when a failure comes at the close of an object)."""

    def __init__(self, path: str, apply, check=None):
        self.path = path
        self._check = check or (lambda f, ops: None)
        self.shadow = shadow_path(path)
        self.previous = previous_path(path)
        self._apply = apply
        self._lag: list = []          # ops committed to path but not yet applied to the shadow
        self._shadow_ok = False       # the shadow exists and equals path less self._lag
        self.copies = 0               # how many times the whole file was copied (for the bench)

    def create(self, build) -> None:
        """Make ``path`` with ``build(h5file)``'s content, refusing (TraceError) if it exists. The
        file is written under the shadow's name and appears whole under ``path``."""
        _unlink(self.shadow)
        with h5py.File(self.shadow, "w", libver=LIBVER, locking=False) as f:
            build(f)
        try:
            os.link(self.shadow, self.path)  # atomic, and never replaces an existing file
        except FileExistsError:
            _unlink(self.shadow)
            raise TraceError(f"{self.path}: already exists; refusing to overwrite a previous "
                             "run's trace (choose another --trace-dir)") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(self.path):
                _unlink(self.shadow)
                raise TraceError(f"{self.path}: already exists; refusing to overwrite a previous "
                                 "run's trace (choose another --trace-dir)") from None
            os.replace(self.shadow, self.path)
            return
        _unlink(self.shadow)  # the same inode as path: it must not be written as the shadow

    def commit(self, ops: list) -> None:
        """Apply ``ops`` and make them the content of ``path``, atomically; raise (OSError or
        whatever HDF5 raised) with ``path`` unchanged. A shadow that cannot be used is replaced
        by a fresh copy once before giving up."""
        if not ops:
            return
        if self._shadow_ok:
            try:
                self._write(self._lag + ops)
            except Exception:  # noqa: BLE001  (held by a reader, damaged: start afresh)
                self._shadow_ok = False
        if not self._shadow_ok:
            self._fresh_shadow()
            self._write(ops)
        self._swap()
        self._lag = list(ops)

    def _write(self, ops: list) -> None:
        """Apply ops to the shadow, flush, close, and read back what ``check`` looks at. On any
        failure the shadow is removed (its state is unknown) and CommitFailed is raised, with no
        traceback left holding HDF5 objects (their late close would print one on stderr)."""
        need = sum(_nbytes(op) for op in ops)
        _room(self.shadow, 2 * need + (1 << 16))
        f = None
        try:
            # locking: fail at once (BlockingIOError) if a reader holds the shadow, which is a
            # file that was committed earlier; "best-effort": file systems without locks work.
            # rdcc_nbytes=0: no chunk cache, so that a failed write raises here, not at close
            f = h5py.File(self.shadow, "a", libver=LIBVER, locking="best-effort", rdcc_nbytes=0)
            for op in ops:
                self._apply(f, op)
            f.flush()
            f.close()
            with h5py.File(self.shadow, "r", locking=False) as g:
                self._check(g, ops)
        except BaseException as e:  # noqa: BLE001
            self._shadow_ok = False
            failure = CommitFailed.of(e)
            with _quiet_hdf5():
                e.__traceback__ = None  # frees the frames holding the HDF5 objects, here
                del e
                if f is not None:
                    try:
                        f.close()
                    except Exception:  # noqa: BLE001
                        pass
                del f
                gc.collect()
            _unlink(self.shadow)
            raise failure from None

    def _fresh_shadow(self) -> None:
        """The shadow becomes a new copy of ``path`` (a new file: whoever holds the old shadow
        open keeps the file it had)."""
        _unlink(self.shadow)
        try:
            _room(self.shadow, os.path.getsize(self.path))
            shutil.copyfile(self.path, self.shadow)
        except BaseException as e:
            _unlink(self.shadow)
            raise CommitFailed.of(e) from None
        self.copies += 1
        self._shadow_ok = True
        self._lag = []

    def _swap(self) -> None:
        """The commit: the shadow replaces ``path`` by rename; the file it replaces keeps a
        second name and becomes the next shadow. Raises only if ``path`` is unchanged."""
        _unlink(self.previous)
        try:
            os.link(self.path, self.previous)
            linked = True
        except OSError:  # no hard links here: the next commit copies the whole file
            linked = False
        try:
            os.replace(self.shadow, self.path)  # the commit point
        except BaseException:
            self._shadow_ok = False
            _unlink(self.shadow)
            _unlink(self.previous)
            raise
        self._shadow_ok = False
        if linked:
            try:
                os.replace(self.previous, self.shadow)
                self._shadow_ok = True
            except OSError:
                _unlink(self.previous)

    def discard_shadow(self) -> None:
        """Remove the writer's private files (at close: only ``path`` stays)."""
        self._shadow_ok = False
        self._lag = []
        _unlink(self.shadow)
        _unlink(self.previous)

    def remove(self) -> None:
        """Remove ``path`` and the private files (a run refused before it began)."""
        self.discard_shadow()
        os.remove(self.path)
