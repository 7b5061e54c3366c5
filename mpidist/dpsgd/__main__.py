"""``mpirun -n 8 python -m mpidist.dpsgd``: D-PSGD on the embedded digits (--help for the flags)."""
from .cli import main
main()
