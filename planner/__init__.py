"""GPU-fleet capacity planner for image generation: measurements in, a plan of least $/image out."""

__version__ = "0.1.0"
