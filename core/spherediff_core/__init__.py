"""SphereDiff: seamless 360-degree panoramas from stock diffusion models."""

__version__ = "0.1.0"
