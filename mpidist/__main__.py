"""``python -m mpidist``: the algorithms, one line each; ``--module NAME`` checks a name (jobs)."""
import sys

from .algorithms import ALGORITHMS, get
from .errors import UsageError


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--module"] and len(argv) == 2:
        try:
            print(get(argv[1]).module)
            return 0
        except UsageError as e:
            print(f"mpidist: error: {e}", file=sys.stderr)
            return 2
    if argv:
        print("usage: python -m mpidist [--module NAME]", file=sys.stderr)
        return 2
    print("mpidist: distributed deep-learning algorithms on MPI, every message traced to HDF5\n")
    w = max(len(a.name) for a in ALGORITHMS.values())
    for a in ALGORITHMS.values():
        print(f"  {a.name:<{w}}  {a.title}: {a.summary}")
    print("\nrun one:   mpirun -n 8 python -m mpidist.<name>      (--help for its flags)")
    return 0


sys.exit(main())
