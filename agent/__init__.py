"""The GPU host agent: discover, calibrate and probe what each GPU really does on diffusion pipelines."""

__version__ = "0.1.0"
