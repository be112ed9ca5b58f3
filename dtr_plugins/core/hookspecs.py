"""Hook specifications: the whole contract between dtr-plugins and its plugins.

Every kind of plugin has one registration hook. Each hook receives a ``register`` callable::

    register(name, factory, params=ParamsModel, description="one line")

``factory`` is called later with the validated fields of ``params`` (a pydantic model, the only place
the plugin's defaults are written) as keyword arguments. What the returned object must provide is
written as a ``typing.Protocol`` per kind in :mod:`dtr_plugins.core.contracts`. Mark implementations
with ``@dtr_plugins.hookimpl`` and expose the module through the ``dtr_plugins`` entry-point group of
your distribution (``[project.entry-points.dtr_plugins] name = "your_package.module"``).

Parameters of every hook:
    register: ``register(name: str, factory: Callable[..., T], params: type[pydantic.BaseModel] | None
        = None, description: str = "") -> None``. ``name`` is what configs use; ``factory(**params)``
        returns the plugin object ``T``; ``params`` defaults to a model without fields; ``description``
        is one line for ``dtr plugins`` (default: the factory's docstring).
"""
from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "dtr_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dtr_register_strategies(register: Callable[..., None]) -> None:
    """Register routing strategies (:class:`~dtr_plugins.core.contracts.RoutingStrategy`).

    A strategy's factory returns one of two kinds, told apart by their Protocols:

    - static (:class:`~dtr_plugins.core.contracts.RoutingStrategy`): an object with
      ``mask_table(num_tasks, channels, *, layer=0, num_layers=1) -> torch.BoolTensor[num_tasks, channels]``:
      row ``t`` says which channels timestep ``t`` may use in that layer (the fast path: one shared bool
      buffer per distinct table, no mask op at all under vanilla);
    - learned (:class:`~dtr_plugins.core.contracts.LearnedRoutingStrategy`, contract v2): a
      ``torch.nn.Module`` with the class attribute ``learned_routing = True`` and ``bind``, ``layer_gate``,
      ``pop_aux_losses``, ``param_groups`` and ``task_tables``: real-valued gates per sample (or per sample
      and token), its own parameters (an optimizer group, EMA, checkpoints), named auxiliary losses, and
      float ``[T, C]`` tables for sampling when the gates depend on the task alone.

    Either is registered the same way, ``register(name, factory, params=Model, description=...)``.

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_backbones(register: Callable[..., None]) -> None:
    """Register denoiser backbones (:class:`~dtr_plugins.core.contracts.Backbone`).

    A backbone's factory returns a :class:`dtr_plugins.core.routing.RoutedBackbone`: a module called as
    ``model(x, t, y=None)`` with ``in_channels``, ``input_size``, ``num_classes`` (``null_class``: guidance), that
    declares the unit count of each routed layer at a routing site through ``routed_channels(site)``
    (``routing_sites`` lists its sites; ``input`` is every backbone's) and receives its
    :class:`RoutingPlan` through ``attach_routing(plan)``. A backbone on codec latents sets the class
    attribute ``input_space = "latents"``.

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_loss_weightings(register: Callable[..., None]) -> None:
    """Register loss weightings (:class:`~dtr_plugins.core.contracts.LossWeighting`).

    A weighting's factory returns a :class:`dtr_plugins.weighting.base.LossWeighting`: it turns per-sample
    losses at the timesteps it is given into the scalar training loss, and may name the timestep sampler it
    needs (``timestep_sampler(T)``; a config's ``timesteps`` section takes precedence).

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_datasets(register: Callable[..., None]) -> None:
    """Register datasets (:class:`~dtr_plugins.core.contracts.Dataset`).

    A dataset's factory returns a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, images as
    float tensors ``[C, H, W]`` in ``[-1, 1]`` and labels as ints, with a ``num_classes`` attribute.

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_codecs(register: Callable[..., None]) -> None:
    """Register codecs (:class:`~dtr_plugins.core.contracts.Codec`): image <-> denoiser-space stages.

    A codec's factory returns an object with ``latent_shape``, ``posterior``, ``encode``, ``decode``,
    ``fingerprint`` and ``bounded``. Configs name one in a ``codec: {name: ..., **params}`` section
    (``vae:`` is the shorthand for the built-in ``autoencoder_kl``); without either the codec is
    ``identity`` (pixels).

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_feature_extractors(register: Callable[..., None]) -> None:
    """Register feature extractors for evaluation metrics (FID, KID, precision/recall)
    (:class:`~dtr_plugins.core.contracts.FeatureExtractor`).

    A feature extractor's factory returns its settings for torch-fidelity (see
    :mod:`dtr_plugins.extractors.builtin`).

    Args:
        register: the registration callable described in the module docstring.
    """


# --- flow: process plugins (lead: re-apply on the refactored hookspecs) -----------------------------
@hookspec
def dtr_register_processes(register: Callable[..., None]) -> None:
    """Register diffusion processes (the ``diffusion`` config section; ``gaussian`` is the default).

    The factory returns a :class:`dtr_plugins.core.contracts.DiffusionProcess` (every member the engine
    reads, including its samplers, default sampler and respacing, sample-settings check, allowed loss
    weightings and ``learn_sigma``); config validation builds it from its params. The held-out loss is
    the optional :class:`~dtr_plugins.core.contracts.SupportsHeldoutLoss`.
    """


# --- trackers (helper "trackers") -------------------------------------------------------------------
@hookspec
def dtr_register_trackers(register: Callable[..., None]) -> None:
    """Register experiment trackers (TensorBoard, Weights & Biases, MLflow, ...).

    Args:
        register: ``register(name, factory, params=ParamsModel, description="one line")``.
            ``name`` is what ``log.trackers`` lists in a run config; ``factory`` is a
            :class:`dtr_plugins.core.tracking.TrackerFactory`: called with the validated fields of
            ``params`` it returns a :class:`dtr_plugins.core.tracking.Tracker` (``start`` /
            ``log_scalars`` / ``log_image`` / ``finish``), and its ``missing_requirement()`` names the
            install command when the tracker's package is absent (checked by ``dtr validate``).
            ``params`` is a pydantic model of the tracker's settings (``log.trackers: [{name: wandb,
            project: x}]``); ``description`` is the line ``dtr plugins`` shows.
    """


# --- launchers (slurm helper) ---------------------------------------------------------------------
@hookspec
def dtr_register_launchers(register: Callable[..., None]) -> None:
    """Register suite launchers (where the runs of a suite are started: ``local``, ``slurm``, a site's own).

    A launcher's factory returns a :class:`dtr_plugins.launchers.Launcher`: ``launch(suite_root,
    runs)``, ``active(suite_root, runs)``, ``wait(...)`` and ``cancel(...)`` over run directories.
    """


@hookspec
def dtr_register_state_dict_adapters(register: Callable[..., None]) -> None:
    """Register state-dict adapters (:class:`~dtr_plugins.core.contracts.StateDictAdapter`): a backbone's
    weights in another library's layout, for ``dtr export --format`` and ``from_pretrained``.

    ``register(BACKBONE_NAME, factory)``: the name is the backbone's (one adapter per backbone); the
    factory returns the adapter.
    """


@hookspec
def dtr_register_ema(register: Callable[..., None]) -> None:
    """Register EMA rules (:class:`~dtr_plugins.core.contracts.EmaRule`; config ``ema: {name, **params}``).

    The factory returns an object with ``profiles()`` (the averages tracked, the first being the run's EMA),
    ``betas(step)`` (one decay per profile after optimizer step ``step``) and ``applied()`` (for ``meta.json``).
    Built-ins: ``constant``, ``warmup``, ``power`` (EDM2's power-function EMA; post-hoc reconstruction with
    ``dtr ema``).

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_timestep_samplers(register: Callable[..., None]) -> None:
    """Register timestep-sampler rules (:class:`~dtr_plugins.core.contracts.TimestepRule`; config
    ``timesteps: {name, **params}``).

    The factory returns an object whose ``sampler(process, continuous=...)`` gives the
    :class:`~dtr_plugins.core.contracts.TimestepSampler` the training loop draws ``t`` from, for the process's
    kind of time. Built-ins: ``uniform``, ``logit_normal``, ``cluster_balanced``, ``speed``.

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_conditioners(register: Callable[..., None]) -> None:
    """Register conditioners (:class:`~dtr_plugins.core.contracts.Conditioner`): frozen encoders of the text a
    text-to-image model is conditioned on (the ``text`` config section; built-in: ``clip_text``).

    A conditioner's factory returns an object with ``max_length`` (tokens ``L``), ``embed_dim`` (``D``),
    ``fingerprint()`` (a digest of its weights and tokenizer, what the text-embedding cache is keyed by) and
    ``encode(texts, device=None) -> (tokens [B, L, D], pooled [B, D], mask [B, L])``.

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_token_routers(register: Callable[..., None]) -> None:
    """Register token routers (:class:`~dtr_plugins.core.contracts.TokenRouter`; config
    ``token_routing: {name, **params}``; built-in: ``tread``).

    A token router's factory returns an object with ``start`` / ``end`` (the block span, both included),
    ``keep_count(tokens)``, ``select(n, tokens, device) -> [n, K]`` token indices and ``applied()``; a backbone
    with :class:`~dtr_plugins.core.contracts.SupportsTokenRouting` runs only the selected tokens through the span
    in training forwards.

    Args:
        register: the registration callable described in the module docstring.
    """


@hookspec
def dtr_register_regularizers(register: Callable[..., None]) -> None:
    """Register regularisers (:class:`~dtr_plugins.core.contracts.Regularizer`; config
    ``regularizer: {name, **params}``): auxiliary losses on a backbone's hidden tokens against a frozen encoder.

    The factory returns an object with ``block``, ``bind(layout)``, ``module()`` (its trainable part),
    ``prepare(images)``, ``losses(hidden, part)`` and ``applied()``. Built-in: ``repa`` (REPA, Yu et al., ICLR
    2025; docs/regularizers.md).

    Args:
        register: the registration callable described in the module docstring.
    """
