"""Custom operators of hpcm-rwkv: one folder per operator (contract, kernels, plugin, PyTorch op)."""
