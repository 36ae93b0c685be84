"""Official CoBit checkpoints -> hub-ready pipeline folders.

Command line: `cobit-convert` or `python -m bitstream_diffusion.conversion.convert_cobit_checkpoint`.
"""

__all__ = ["convert_cobit_checkpoint"]


def __getattr__(name: str):
    if name == "convert_cobit_checkpoint":
        from .convert_cobit_checkpoint import convert_cobit_checkpoint

        return convert_cobit_checkpoint
    raise AttributeError(name)
