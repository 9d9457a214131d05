"""hpcm-rwkv: HPCM learned image codecs with bi-directional RWKV context models, from PyTorch to deployment."""

__version__ = "0.2.0"
