"""recgen: turn a PyTorch DLRM-style model into a sharded NVIDIA Triton model repository."""

__version__ = "0.1.0"
