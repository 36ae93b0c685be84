"""Packaging for bitstream-diffusion (CoBit: continuous bitstream diffusion language models)."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # GPU users: install the torch build for your CUDA first (https://pytorch.org); any torch >= 2.4 works.
    "torch>=2.4",
    "transformers>=5.0,<6",
    "diffusers>=0.42,<0.43",
    "accelerate>=1.15",
    "datasets>=5.0",
    "tokenizers>=0.21",
    "evaluate>=0.4.6",
    "huggingface-hub>=1.0",
    "safetensors>=0.4",
    "numpy",
    "pyyaml",
    "tqdm",
]

EXTRAS = {
    "flash": ["flash-attn>=2.6"],
    "eval": ["gguf", "matplotlib"],
    "mauve": ["mauve-text>=0.4"],
    "train": ["tensorboard"],
    "test": ["pytest>=8", "pytest-timeout", "gguf", "matplotlib", "tensorboard", "mauve-text>=0.4"],
}
EXTRAS["dev"] = sorted(set(EXTRAS["test"] + ["ruff"]))

setup(
    name="bitstream-diffusion",
    version="0.1.0",
    description="CoBit continuous bitstream diffusion language models for transformers, diffusers and accelerate",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "cobit-convert=bitstream_diffusion.conversion.convert_cobit_checkpoint:main",
        ]
    },
)
