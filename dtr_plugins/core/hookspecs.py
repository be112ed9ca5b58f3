"""Hook specifications: the whole contract between dtr-plugins and its plugins.

Every kind of plugin has one registration hook. Each hook receives a ``register`` callable::

    register(name, factory, params=ParamsModel, description="one line")

``factory`` is called later with the validated fields of ``params`` (a pydantic model) as keyword
arguments. Mark implementations with ``@dtr_plugins.hookimpl`` and expose the module through the
``dtr_plugins`` entry-point group of your distribution.
"""
from __future__ import annotations

import pluggy

PROJECT = "dtr_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dtr_register_strategies(register):
    """Register routing strategies.

    A strategy's factory returns an object with
    ``mask_table(num_tasks, channels, *, layer=0, num_layers=1) -> torch.BoolTensor[num_tasks, channels]``:
    row ``t`` says which channels timestep ``t`` may use in that layer.
    """


@hookspec
def dtr_register_backbones(register):
    """Register denoiser backbones.

    A backbone's factory returns a :class:`dtr_plugins.core.routing.RoutedBackbone`: a module called as
    ``model(x, t, y=None)`` that declares the unit count of each routed layer at a routing site through
    ``routed_channels(site)`` (``routing_sites`` lists its sites; ``input`` is every backbone's) and
    receives its :class:`RoutingPlan` through ``attach_routing(plan)``.
    """


@hookspec
def dtr_register_loss_weightings(register):
    """Register loss weightings.

    A weighting's factory returns a :class:`dtr_plugins.weighting.base.LossWeighting`: it samples the
    training timesteps and turns per-sample losses into the scalar training loss.
    """


@hookspec
def dtr_register_datasets(register):
    """Register datasets.

    A dataset's factory returns a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, images as
    float tensors ``[C, H, W]`` in ``[-1, 1]`` and labels as ints.
    """


@hookspec
def dtr_register_feature_extractors(register):
    """Register feature extractors for evaluation metrics (FID, KID, precision/recall).

    A feature extractor's factory returns a dict of settings for torch-fidelity (see
    :mod:`dtr_plugins.engine.feature_extractors`).
    """
