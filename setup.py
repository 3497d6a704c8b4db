from setuptools import find_packages, setup

setup(
    name="rpanoptic",
    version="0.1.0",
    description="Recurrent Panoptic FPN (hGRU + C-RBP) as a Detectron2 extension",
    license="Apache-2.0",
    packages=find_packages(include=["rpanoptic", "rpanoptic.*"]),
    # Measured on CPython 3.11; the detectron2 wheel this project installs is built for 3.10.
    python_requires=">=3.10",
    # detectron2 is not on the package index: install it first (docs/INSTALL.md). The pins that
    # were measured to install together are in requirements.txt; these are the ranges the code
    # needs.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy<2",  # detectron2 and opencv-python-headless<4.11 are built against numpy 1
        "setuptools<81",  # detectron2's model zoo imports pkg_resources
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "pycocotools>=2.0.2",
        "panopticapi-lite>=0.2",
        "opencv-python-headless<4.11",
        "pillow",
        "pyyaml",
        "matplotlib",
        "scipy",
        "tabulate",
        "termcolor",
        "yacs",
        "cloudpickle",
        "tensorboard",
        "tqdm",
    ],
    extras_require={
        "slurm": ["submitit>=1.4"],  # tools/submit_slurm.py
        "dev": ["pytest>=7", "black", "isort", "flake8"],
    },
)
