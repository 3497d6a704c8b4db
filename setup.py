from setuptools import find_packages, setup

setup(
    name="rpanoptic",
    version="0.1.0",
    description="Recurrent Panoptic FPN (hGRU + C-RBP) as a Detectron2 extension",
    packages=find_packages(include=["rpanoptic", "rpanoptic.*"]),
    python_requires=">=3.9",
    # torch, torchvision and detectron2 are installed separately (see README); the rest:
    install_requires=[
        "numpy<2",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        "panopticapi-lite>=0.2",
        "matplotlib",
        "tqdm",
    ],
)
