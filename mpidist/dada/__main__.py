"""python -m mpidist.dada: DADA (rank 0 the source, the other ranks targets)."""
from .cli import main
main()
