"""The composition root: config -> objects (:mod:`.build`) and the checks on what it built (:mod:`.validate`).

:func:`compose` is the one builder that ``dtr validate``, ``dtr train``, ``dtr sample``, ``dtr masks``,
``dtr export`` and the Python API use; :func:`validate_run` composes on the meta device and checks.
"""
from dtr_plugins.compose.build import (
    CodecSpec,
    Components,
    ModelInput,
    backbone_input_space,
    build_codec,
    build_components,
    build_dataset,
    build_diffusion,
    build_loss_weighting,
    build_model,
    build_routing_plan,
    build_strategy_from,
    cache_latents,
    check_composition,
    codec_spec,
    compose,
    image_shape,
    latent_cache_root,
)
from dtr_plugins.compose.heldout import heldout_dataset_params, heldout_skip_reason, open_heldout_split
from dtr_plugins.compose.regularize import build_regularizer
from dtr_plugins.compose.schedules import build_ema, build_timestep_rule, ema_section
from dtr_plugins.compose.validate import check_device, check_machine, check_run, validate_run

__all__ = ["CodecSpec", "Components", "ModelInput", "codec_spec", "build_codec", "build_strategy_from",
           "build_model", "build_routing_plan", "build_diffusion", "build_loss_weighting", "build_dataset",
           "build_components", "compose", "check_composition", "image_shape", "latent_cache_root", "cache_latents",
           "backbone_input_space", "build_ema", "build_regularizer", "build_timestep_rule", "ema_section",
           "check_device", "check_machine", "check_run", "heldout_dataset_params", "heldout_skip_reason",
           "open_heldout_split", "validate_run"]
