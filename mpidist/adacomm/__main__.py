"""``mpirun -n 4 python -m mpidist.adacomm``: AdaComm on the embedded digits (--help: the flags)."""
from .cli import main
main()
