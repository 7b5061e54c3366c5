"""python -m mpidist.mdgan: MD-GAN (rank 0 the server, the other ranks workers)."""
from .cli import main
main()
