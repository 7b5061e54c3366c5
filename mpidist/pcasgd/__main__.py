"""``mpirun -n 8 python -m mpidist.pcasgd``: PC-ASGD on the embedded digits (--help: the flags)."""
from .cli import main
main()
