"""``gaussian``: guided-diffusion's discrete Gaussian process (the default ``diffusion``)."""
from __future__ import annotations

from dtr_plugins.core.config import DiffusionConfig
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.process import GaussianProcess


@hookimpl
def dtr_register_processes(register):
    register("gaussian", GaussianProcess, params=DiffusionConfig,
             description="DDPM / guided-diffusion: T integer timesteps, epsilon prediction, DDPM and DDIM samplers")
