# This file is over 500 lines because every plugin kind's Protocol is in this one place, read as one contract.
"""The written contract of every plugin kind: what the engine reads from a plugin, and nothing more.

Each kind is registered through one hook of :mod:`dtr_plugins.core.hookspecs`; its factory is called with
the validated fields of its params model (a pydantic model: the one place a plugin's defaults live) and
returns an object satisfying the protocol below. The engine reads only the attributes named here; it
never probes a plugin with ``getattr``.

Data flows config -> compose (:mod:`dtr_plugins.compose`) -> engine::

    dataset item (image [C, H, W] in [-1, 1], label)
        -> codec.encode / cached posteriors  -> x0 [N, C', h, w] in the backbone's input space
        -> diffusion.training_losses(backbone with routing plan, x0, t) -> loss_weighting -> scalar loss
    sampling: noise [N, backbone.in_channels, input_size, input_size] -> diffusion.sample -> codec.decode
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["RoutingStrategy", "ContinuousStrategy", "LearnedRoutingStrategy", "GateSummary", "SupportsStateDictAdapter",
           "Backbone",
           "SupportsGuidance", "Codec", "LossWeighting", "TimestepSampler", "TimestepRule", "SupportsNoiseSchedule",
           "EmaProfile",
           "EmaRule", "Dataset", "SupportsImageShape",
           "SupportsAugmentation", "SupportsHeldoutSplit", "FeatureExtractor", "SupportsExtractorRecord",
           "DiffusionProcess", "SupportsHeldoutLoss", "Tracker", "SupportsTrackerResume", "TrackerFactory", "Launcher",
           "RunSpec", "StateDictAdapter", "InputSpace", "VARIANCE_PARAM", "missing_members", "Conditioner",
           "SupportsCaptions", "SupportsCaptionClasses", "SupportsTextConditioning", "TokenRouter",
           "SupportsTokenRouting", "TokenLayout", "SupportsBlockTokens", "Regularizer", "TimeExpertRouting",
           "NoiseAxis", "SupportsActiveParameters", "SupportsLogSNR"]

#: where a backbone's inputs live: image pixels (identity codec) or the latents of a codec
InputSpace = Literal["pixels", "latents"]


@runtime_checkable
class RoutingStrategy(Protocol):
    """Which channels each timestep (task) may use in each routed layer.

    ``mask_table`` returns a ``torch.bool`` tensor ``[num_tasks, channels]``: row ``t`` is the mask of
    timestep ``t`` in layer ``layer`` (of ``num_layers`` routed layers, in forward order). It is called
    once per distinct layer when a model is composed, never inside the training step. ``repr`` names the
    strategy and its parameters (shown on heatmaps and in reports).
    """

    def mask_table(self, num_tasks: int, channels: int, *, layer: int = 0, num_layers: int = 1) -> Tensor: ...


@runtime_checkable
class ContinuousStrategy(Protocol):
    """A strategy that also gives its masks in closed form over a continuous noise level ``u`` in [0, 1]
    (0 clean, 1 pure noise), used under continuous-time processes (core/continuous_routing.py)."""

    def mask_for_u(self, u: Tensor, channels: int, *, layer: int = 0, num_layers: int = 1) -> Tensor:
        """``bool [B, channels]`` for ``u`` ``[B]``; equals ``mask_table(T, ...)[k]`` at ``u = k / (T - 1)``."""
        ...


@runtime_checkable
class LearnedRoutingStrategy(Protocol):
    """Routing contract v2: a strategy that computes real-valued gates, may learn them and add losses.

    The object is a ``torch.nn.Module`` (checked when the plan is built) and sets the class attribute
    ``learned_routing = True``; that declared attribute and the methods below tell it apart from a static
    :class:`RoutingStrategy` (``isinstance`` against this runtime-checkable Protocol, never ``getattr``).
    The :class:`~dtr_plugins.core.routing.RoutingPlan` holds it as its submodule ``learned``, so its
    parameters and buffers are in the model's ``state_dict`` under ``routing.learned.*``: they get EMA
    (parameters averaged, buffers copied from the trained model), are saved and resumed with the model.
    Official checkpoints (without those keys) still load: the router keeps its initialisation and the loader
    names the keys it left at their init.

    A gate ``g`` is applied as the routed residual ``x + F(g * x)`` (:func:`~dtr_plugins.core.routing.routed_residual`;
    Switch-DiT's ``x*g + F(x*g) + (1-g)*x`` is the same thing). A 0/1 gate is DTR's mask.

    Life cycle:

    1. ``bind(layer_units, num_tasks, site=..., cond_dim=...)`` -- once, by the composition root (through the
       plan), after the backbone is built and before the optimizer: create the per-layer parameters.
       ``layer_units[l]``: channels of routed layer ``l`` (forward order); ``num_tasks``: ``T``; ``site``: the
       routing site (``input``, or a unit site the backbone lists in ``learned_sites``, e.g. DiT's
       ``heads_mlp``; a strategy refuses sites it cannot route with a one-line ConfigError); ``cond_dim``:
       width of the backbone's conditioning vector ``cond`` (DiT: ``hidden_size``; None: the backbone gives none).
    2. ``layer_gate(layer, x, tasks, cond)`` -- in every forward pass, once per routed layer, with the
       block input ``x``: DiT tokens ``[N, L, C]``, ADM feature maps ``[N, C, H, W]``. ``tasks``: ``[N]``
       int64 timestep indices in ``0..T-1``, or float32 noise levels ``u`` in ``[0, 1]`` (0 clean) under a
       continuous process (flow matching; a strategy that cannot route them raises a one-line
       :class:`~dtr_plugins.core.errors.ConfigError`). ``cond``: ``[N, cond_dim]`` or None. Returns a gate
       broadcastable against ``x`` in its layout: ``[N, 1, C]`` or ``[N, L, C]`` for tokens, ``[N, C, 1, 1]``
       or ``[N, C, H, W]`` for feature maps (:func:`~dtr_plugins.core.routing.gate_like` lays ``[N, C]``
       rows out for either), dtype of ``x``. At a unit site: one row per sample ``[N, units]`` (``x`` is still
       the block input).
    3. ``pop_aux_losses()`` -- after each training forward pass: the named, already weighted scalar
       losses collected since the last call (empty when nothing was collected, e.g. in eval mode). The
       trainer adds their sum to the training loss and logs each as ``aux/<name>`` in metrics.jsonl.
    4. ``param_groups()`` -- optimizer groups (dicts with ``params`` and optionally ``lr``,
       ``weight_decay``) covering exactly the strategy's trainable parameters; they are taken out of the
       backbone's group.
    5. ``task_tables(num_tasks)`` -- when the gates depend on the task alone: one float ``[T, C_l]`` table
       per routed layer, such that ``layer_gate`` equals ``gate_like(table[tasks], x)``; sampling then reads
       the tables and runs no routing network. None when the gates depend on ``x`` or ``cond``.

    ``repr`` names the strategy and its parameters (shown in reports).
    """

    #: declared by every learned strategy (class attribute), ``True``
    learned_routing: ClassVar[bool]

    def bind(self, layer_units: Sequence[int], num_tasks: int, *, site: str, cond_dim: int | None) -> None: ...

    def layer_gate(self, layer: int, x: Tensor, tasks: Tensor, cond: Tensor | None) -> Tensor: ...

    def pop_aux_losses(self) -> dict[str, Tensor]: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def task_tables(self, num_tasks: int) -> list[Tensor] | None: ...


@runtime_checkable
class GateSummary(Protocol):
    """Optional capability of a learned strategy: summarise its gates per timestep for pictures even when
    they depend on more than the task (``switch``: expert selection probabilities). Returns per routed
    layer a float ``[num_tasks, K]`` table, the name of a unit (``"expert"``) and of the value drawn."""

    def gate_summary(self, num_tasks: int) -> tuple[list[Tensor], str, str]: ...


@dataclass(frozen=True)
class NoiseAxis:
    """The run's noise levels as a :class:`TimeExpertRouting` strategy needs them (built by the composition root
    from the process). ``num_tasks``: ``T``; ``continuous``: the strategy sees float noise levels ``u`` in [0, 1]
    (flow matching) rather than int64 timesteps ``0..T-1``; ``log_snr``: float64 ``[T]``, the log signal-to-noise
    ratio at the grid positions ``p_k`` of the noise axis (discrete: timestep ``k``, ``p_k = k / T``; continuous:
    ``u = p_k = (k + 1/2) / T``), decreasing in ``k``; None when the process does not report it. ``run_records``:
    reads a trained run directory's metrics records (``RunDir.read_metrics``: dicts, in order; held-out losses under
    ``heldout``), for boundaries measured on that run; None where the composition root gives no reader."""

    num_tasks: int
    continuous: bool
    log_snr: np.ndarray | None = None
    run_records: Callable[[str], list[dict[str, Any]]] | None = None


@runtime_checkable
class TimeExpertRouting(Protocol):
    """Optional capability of a learned strategy: experts that own whole sets of the backbone's weights, each for an
    interval of noise levels (``time_experts``; eDiff-I's ensemble of expert denoisers).

    ``bind_noise(axis)``: once, by the composition root after ``bind`` (a :class:`NoiseAxis`): place the boundaries
    (one-line :class:`~dtr_plugins.core.errors.ConfigError` naming the ``routing`` key when they cannot be placed).
    ``bind_weights(named, blocks)``: once, when the plan is attached to the backbone: ``named`` maps the backbone's
    trainable parameter names to the tensors (the routing plan's own left out), ``blocks`` the name prefixes the
    backbone declares as its per-noise-level blocks (``RoutedBackbone.expert_blocks``; empty: none); the strategy
    keeps its own copies of the parameters it splits. ``expert_of(tasks)``: int64 ``[N]`` expert of each task
    (``[N]`` int64 timesteps or float noise levels, as ``layer_gate`` gets them). ``expert_weights(e)``: parameter
    name -> tensor for expert ``e`` (empty: the backbone's own weights, expert 0). ``intervals()``: JSON-able list,
    one entry per expert, of the noise levels it owns (recorded in ``meta.json`` and model cards).
    """

    def bind_noise(self, axis: NoiseAxis) -> None: ...

    def bind_weights(self, named: Mapping[str, Tensor], blocks: Sequence[str]) -> None: ...

    def expert_of(self, tasks: Tensor) -> Tensor: ...

    def expert_weights(self, expert: int) -> dict[str, Tensor]: ...

    def intervals(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class SupportsActiveParameters(Protocol):
    """Optional capability of a model part (a learned strategy): parameters it holds that one forward pass does not
    use (``time_experts``: the other experts' copies). :func:`dtr_plugins.core.param_count.parameter_counts` reports
    ``active = total - inactive_parameters()`` beside the total."""

    def inactive_parameters(self) -> int: ...


@runtime_checkable
class SupportsLogSNR(Protocol):
    """Optional capability of a continuous process: ``log_snr(u)``, float64 log signal-to-noise ratio at noise
    levels ``u`` (float64 array in (0, 1)); flow matching's linear path: ``2 log((1 - u) / u)``. (A discrete process
    reports its schedule through :class:`SupportsNoiseSchedule`.)"""

    def log_snr(self, levels: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class TokenRouter(Protocol):
    """The ``token_router`` kind (config ``token_routing: {name, **params}``; built-in ``tread``): in a training
    forward, which tokens run blocks ``start..end`` (both included, 0-based); the others skip them and are put
    back in place after block ``end`` (:mod:`dtr_plugins.core.token_routing`). Evaluation and sampling run every
    token.

    ``keep_count(tokens)``: ``K``, tokens of ``tokens`` that run the span (``1 <= K <= tokens``);
    ``select(n, tokens, device)``: ``[n, K]`` int64 token indices per sample, drawn from the global generator of
    ``device`` (training re-seeds it from ``(seed, rank, step)``, so a resume draws the same);
    ``applied()``: JSON-able record for ``meta.json`` (``name`` and the parameters). ``repr`` names it.
    """

    start: int
    end: int

    def keep_count(self, tokens: int) -> int: ...

    def select(self, n: int, tokens: int, device: Any = None) -> Tensor: ...

    def applied(self) -> dict[str, Any]: ...


@runtime_checkable
class SupportsTokenRouting(Protocol):
    """Optional capability of a backbone: it routes tokens (:class:`TokenRouter`) through its blocks.
    ``token_layout()``: ``(blocks, tokens)``, the blocks a span may cover (``end < blocks``) and the tokens per
    sample they see; ``attach_token_routing(router)`` is called by the composition root; ``token_router`` is the
    attached one (None: none). A backbone without it refuses a ``token_routing`` section."""

    token_router: TokenRouter | None

    def token_layout(self) -> tuple[int, int]: ...

    def attach_token_routing(self, router: TokenRouter) -> None: ...


@runtime_checkable
class Backbone(Protocol):
    """A denoiser ``model(x, t, y=None) -> Tensor`` (an ``nn.Module``; in practice a subclass of
    :class:`dtr_plugins.core.routing.RoutedBackbone`).

    ``x``: ``[N, in_channels, input_size, input_size]`` in the backbone's input space; ``t``: ``[N]`` int64
    timestep indices in ``0..T-1``; ``y``: ``[N]`` int64 labels (only when ``num_classes > 1``). Returns
    ``[N, out_channels, input_size, input_size]``: epsilon, then the variance interpolation when the
    diffusion learns sigma (``out_channels = 2 * in_channels``).

    Attributes:
        in_channels: channels of ``x``.
        input_size: side of the square ``x`` the denoiser sees (pixels, or latents for a latent backbone).
        num_classes: number of class labels; ``None``, 0 or 1: unconditional (no ``y``).
        input_space: class attribute, ``"pixels"`` (the default of ``RoutedBackbone``) or ``"latents"``.
            A latent backbone is built with ``in_channels`` and ``input_size`` of the codec's latents
            (filled in by the composition root when its params leave them unset; refused when they
            disagree); a pixel backbone refuses a non-identity codec.

    ``routed_channels(site)`` lists the unit count (channels at the ``input`` site) of every routed layer in
    forward order (it must not depend on the weights); ``routing_sites`` (class attribute) names the sites a
    routing may act on; ``attach_routing(plan)`` receives the :class:`~dtr_plugins.core.routing.RoutingPlan`
    built for those widths. Guidance is the optional :class:`SupportsGuidance`; whether it predicts a variance
    is its :data:`VARIANCE_PARAM` param, set from the process.
    """

    in_channels: int
    input_size: int
    num_classes: int | None

    def routed_channels(self, site: str = "input") -> list[int]: ...

    def attach_routing(self, plan: Any) -> None: ...

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor: ...


#: the backbone parameter that receives the process's ``learn_sigma`` (the composition root fills it in; a
#: backbone whose params have no such field can only serve processes with ``learn_sigma`` False)
VARIANCE_PARAM = "learn_sigma"


@runtime_checkable
class SupportsGuidance(Protocol):
    """Optional capability of a backbone: classifier-free guidance. ``null_class`` is the label meaning
    "no class" (trained by label dropout); ``None``: built without one, so guidance is refused. A backbone
    without this member cannot be sampled with ``cfg_scale != 1``."""

    @property
    def null_class(self) -> int | None: ...


@runtime_checkable
class Codec(Protocol):
    """The stage between images and the space the denoiser works in (``identity`` for pixels).

    Images are float ``[N, C, H, W]`` in ``[-1, 1]``; latents are float32 ``[N, C', h, w]``, already
    normalised (scaled, shifted) as the denoiser sees them. A codec is frozen (no gradients, no
    state in checkpoints) and follows its input to the input's device.

    Attributes:
        bounded: encoded values lie in ``[-1, 1]`` (pixels), so the sampler may clip its ``x0``
            predictions there; latents are not bounded.
    """

    bounded: bool

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C', h, w)`` of the latents of one ``(C, H, W)`` image; ``ConfigError`` if it cannot encode it."""
        ...

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std ``[N, C', h, w]`` of the (Gaussian) encoding of ``images``, normalised; a
        deterministic codec gives std 0. The latent cache stores these."""
        ...

    def encode(self, images: Tensor) -> Tensor:
        """One sample of the encoding: ``mean + std * noise`` (the global torch generator)."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents -> images ``[N, C, H, W]`` in ``[-1, 1]`` (float32)."""
        ...

    def fingerprint(self) -> str:
        """A digest of everything that changes the latents (weights, config, normalisation); the latent
        cache is keyed by it, never by a path."""
        ...


@runtime_checkable
class LossWeighting(Protocol):
    """Per-sample losses -> the scalar training loss (an ``nn.Module``; see
    :class:`dtr_plugins.weighting.base.LossWeighting`, the base class that gives the defaults).

    A weighting only weighs; it never draws ``t``. Each training step: ``t = sampler.sample(N, device)``
    with the run's :class:`TimestepSampler` (:func:`dtr_plugins.core.timesteps.training_sampler`), then
    ``loss = weighting(terms, t, diffusion)`` with ``terms`` the ``[N]`` tensors ``loss``, ``mse`` and
    (learned sigma) ``vb`` of ``diffusion.training_losses``. ``timestep_sampler(T)``: the sampler this
    weighting needs (``ant_uw``: cluster-balanced), or None for the process's own. ``param_groups()`` are
    added to the optimizer, ``state_dict()`` goes into checkpoints, ``log_values()`` into metrics.jsonl.
    """

    def timestep_sampler(self, num_timesteps: int) -> TimestepSampler | None: ...

    def __call__(self, terms: dict[str, Tensor], t: Tensor, diffusion: Any) -> Tensor: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def log_values(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class TimestepSampler(Protocol):
    """How training times are drawn: ``sample(n, device) -> t`` ``[n]``, from the global torch generator of
    ``device`` (so a checkpoint's RNG state restores the stream). Discrete samplers give int64 indices in
    ``0..num_timesteps-1``; continuous ones float32 times in ``[0, 1]``. ``continuous`` says which."""

    continuous: bool

    def sample(self, n: int, device: Any = None) -> Tensor: ...


@runtime_checkable
class TimestepRule(Protocol):
    """The ``timestep_sampler`` kind (config ``timesteps: {name, **params}``): a rule that gives the
    :class:`TimestepSampler` for a process. ``sampler(process, continuous=...)``: ``process`` is the run's
    :class:`DiffusionProcess` (its ``num_timesteps`` is ``T``, the rows of the routing tables; a rule that needs
    more asks for an optional capability such as :class:`SupportsNoiseSchedule` with ``isinstance``),
    ``continuous`` whether the process takes float times in ``[0, 1]`` (flow matching) or int64 indices
    (gaussian); the process says which through its own sampler. A rule that cannot draw that kind of time for
    that process raises a one-line ``ConfigError`` naming the ``timesteps`` key. ``repr`` names the rule."""

    def sampler(self, process: Any, *, continuous: bool) -> TimestepSampler: ...


@runtime_checkable
class SupportsNoiseSchedule(Protocol):
    """Optional capability of a discrete process: ``alphas_cumprod``, float64 ``[T]``, the signal fraction
    ``abar_t`` of each integer timestep (``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``); the ``speed``
    timestep rule reads it."""

    alphas_cumprod: np.ndarray


@dataclass(frozen=True)
class EmaProfile:
    """One average an :class:`EmaRule` tracks: ``name`` (letters, digits, ``._-``: part of file names, e.g.
    ``ema`` or ``sigma0.050``) and ``sigma_rel``, the relative width of a power-function profile (EDM2), or
    None for a profile of another form (no post-hoc reconstruction from its snapshots)."""

    name: str
    sigma_rel: float | None = None


@runtime_checkable
class EmaRule(Protocol):
    """The ``ema`` kind (config ``ema: {name, **params, snapshot_every}``; ``train.ema_decay`` /
    ``train.ema_warmup`` are the shorthand for ``constant`` / ``warmup``): how the averaged weights follow the
    trained ones. The trainer keeps one copy of the model per profile; after optimizer step ``step`` (0-based,
    counted before the step is taken) it sets ``avg = beta * avg + (1 - beta) * model`` over the parameters
    of each profile with ``betas(step)[i]`` and copies the buffers (a learned router's state is not averaged).

    ``profiles()``: the tracked averages, the first being *the* EMA (evaluation, held-out loss, checkpoints'
    ``ema``, sampling); the others are saved in checkpoints under ``ema_profiles`` and in the EMA snapshots.
    ``betas(step)``: one decay in ``[0, 1]`` per profile, a pure function of ``step`` (resumption is exact).
    ``applied()``: JSON-ready record for ``meta.json``."""

    def profiles(self) -> Sequence[EmaProfile]: ...

    def betas(self, step: int) -> Sequence[float]: ...

    def applied(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TokenLayout:
    """A transformer backbone's hidden tokens: ``blocks`` blocks in forward order, each giving tokens
    ``[B, grid[0] * grid[1], width]`` in row-major patch order; ``partial``: the blocks (1-based) whose output holds
    only some of the tokens in training (inside a token router's span, :class:`TokenRouter`)."""

    blocks: int
    width: int
    grid: tuple[int, int]
    partial: tuple[int, ...] = ()


@runtime_checkable
class SupportsBlockTokens(Protocol):
    """Optional capability of a backbone: a regulariser may read the hidden tokens after a block (REPA).

    ``block_layout()``: its blocks, width and token grid. ``tap_block(block, sink)``: from the next forward on,
    ``sink(h)`` receives the output of block ``block`` (1-based: after ``block`` blocks), ``h`` ``[B, N, width]``
    in the batch's order, with its graph (gradients flow back into the blocks); ``sink=None`` removes the tap."""

    def block_layout(self) -> TokenLayout: ...

    def tap_block(self, block: int, sink: Callable[[Tensor], None] | None) -> None: ...


@runtime_checkable
class Regularizer(Protocol):
    """The ``regularizer`` kind (config ``regularizer: {name, **params}``): an auxiliary training loss on a block's
    hidden tokens against a frozen encoder's features of the clean images (REPA, docs/regularizers.md).

    ``block``: the block whose output it reads (1-based, :class:`SupportsBlockTokens`). ``bind(layout)``: the
    backbone's :class:`TokenLayout`; raises a one-line ``ConfigError`` naming ``regularizer.<key>`` when it cannot
    apply (block out of range, features that do not fit the tokens); builds the trainable part. ``module()``: that
    trainable part (a projector): its parameters are optimised, its state dict saved in checkpoints under
    ``regularizer`` and restored on resume; it is never averaged (EMA) nor exported, and holds no frozen encoder.
    ``prepare(images)``: the clean images of the step's local batch, ``[N, C, H, W]`` in ``[-1, 1]`` (pixels,
    before the codec): the frozen encoder's targets are computed once, without gradients. ``losses(hidden,
    part)``: the hidden tokens ``[m, N_tokens, width]`` of the micro-batch ``part`` (a slice of the prepared
    batch) -> named weighted losses (scalars), added to the training loss and logged as ``aux/<name>``.
    ``applied()``: JSON-ready record for ``meta.json`` (``regularizer``)."""

    block: int

    def bind(self, layout: TokenLayout) -> None: ...

    def module(self) -> torch.nn.Module: ...

    def prepare(self, images: Tensor) -> None: ...

    def losses(self, hidden: Tensor, part: slice) -> dict[str, Tensor]: ...

    def applied(self) -> dict[str, Any]: ...


@runtime_checkable
class Dataset(Protocol):
    """A map-style dataset of ``(image, label)``: image float ``[C, H, W]`` in ``[-1, 1]``, label an int
    in ``0..num_classes-1`` (0 for unconditional data). ``num_classes``: the number of labels."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


@runtime_checkable
class SupportsImageShape(Protocol):
    """Optional capability of a dataset plugin's params model (the pydantic class it registers), read at
    config time without building the dataset: ``image_shape()`` is ``(C, H, W)`` of every image. Needed by
    a codec (latent backbones) and checked against a pixel backbone's input."""

    def image_shape(self) -> tuple[int, int, int]: ...


@runtime_checkable
class SupportsImageSize(Protocol):
    """Optional capability of a dataset's params model, on the class (before validation): the raw ``params``
    with the images' size set to ``height x width`` where unset and possible, else unchanged (a reference
    ``dataset:NAME`` without a size takes the samples' size). Without it: the dataset's own size."""

    @classmethod
    def with_image_size(cls, params: dict[str, Any], height: int, width: int) -> dict[str, Any]: ...


@runtime_checkable
class SupportsAugmentation(Protocol):
    """Optional capability of a dataset's params model: ``random_hflip()`` says whether training images are
    flipped horizontally at random (a latent cache stores both views and flips the latents instead);
    ``unaugmented()`` returns the params of the same images with every random augmentation off (latent
    caching). A params model without it is taken as never augmenting."""

    def random_hflip(self) -> bool: ...

    def unaugmented(self) -> Any: ...


@runtime_checkable
class SupportsContentKey(Protocol):
    """Optional capability of a dataset's params model: ``content_key()`` is what identifies its images, as
    JSON-able values (a folder as its resolved absolute path, so ``./data`` and ``/abs/data`` share a latent
    cache). Without it the key is the params' ``model_dump(mode="json")``."""

    def content_key(self) -> dict[str, Any]: ...


@runtime_checkable
class SupportsHeldoutSplit(Protocol):
    """Optional capability of a dataset's params model: ``heldout_split()`` returns the params of images
    never trained on (no augmentation), for the held-out loss, or None when these params hold nothing out.
    Without it, or with None, a run records no held-out loss (and says why in ``meta.json``)."""

    def heldout_split(self) -> Any: ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """What a feature-extractor factory returns (e.g.
    :class:`dtr_plugins.extractors.builtin.FeatureExtractorSpec`): the torch-fidelity feature
    extractor ``name`` (or ``fidelity_class``), the layer each metric reads (``layers``: metric -> layer
    name), an optional local ``weights_path``, and for label-aware metrics ``num_classes`` and a
    ``classifier(device) -> (uint8 NCHW images -> logits)``."""

    name: str
    layers: Mapping[str, str]
    weights_path: Path | None
    fidelity_class: type | None
    num_classes: int | None
    classifier: Callable[[torch.device], Callable[[Tensor], Tensor]] | None


@runtime_checkable
class SupportsExtractorRecord(Protocol):
    """Optional capability of a :class:`FeatureExtractor`: facts about the extractor itself that evaluation
    records beside every number it produces (``eval.json`` key ``feature_extractor_record``), e.g. a trained
    classifier's accuracy on held-out data and what it was trained on. JSON-able values only."""

    def record(self) -> Mapping[str, Any]: ...


@runtime_checkable
class StateDictAdapter(Protocol):
    """A backbone's weights in another library's layout (e.g. diffusers' ``DiTTransformer2DModel``), declared
    by the backbone plugin through ``dtr_register_state_dict_adapters``: ``register(BACKBONE_NAME, factory)``.

    The sharing code (``dtr export --format``, ``from_pretrained``) knows backbones only through this object.

    Attributes:
        layout: the foreign layout's name (``"diffusers"``), what ``dtr export --format`` names.
        input_space: the backbone's input space (``"pixels"`` or ``"latents"``): a foreign pipeline with a
            VAE loads into a latent backbone.
        weights_file: the file name of the weights in a foreign folder (``diffusion_pytorch_model.safetensors``).

    ``reads(config)``: True when a foreign folder with this ``config.json`` loads into this backbone exactly;
    ``params_from_foreign_config(config, source=...)``: the backbone's params (a ``backbone`` section without
    ``name``); ``from_foreign_state_dict(state, params, source=...)``: the backbone's state dict;
    ``to_foreign_state_dict(model, state, num_timesteps=...)``: ``(foreign state, foreign config, notes)``
    (``notes``: JSON-able record of what the conversion changed). Errors: :class:`CheckpointError` (a foreign
    file that cannot be read) or :class:`UserError` (a model this layout cannot hold), one line each.
    """

    layout: str
    input_space: InputSpace
    weights_file: str

    def reads(self, config: Mapping[str, Any]) -> bool: ...

    def params_from_foreign_config(self, config: Mapping[str, Any], *, source: str) -> dict[str, Any]: ...

    def from_foreign_state_dict(self, state: Mapping[str, Tensor], params: Mapping[str, Any], *,
                                source: str) -> dict[str, Tensor]: ...

    def to_foreign_state_dict(self, model: Any, state: Mapping[str, Tensor], *, num_timesteps: int
                              ) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]: ...


@runtime_checkable
class DiffusionProcess(Protocol):
    """The ``process`` plugin kind: how training times are drawn, what the model is trained on, how it
    samples and what a routing task is (a row of the ``T``-row mask tables, or a continuous noise level).

    Config validation builds the process from its validated params (cheap: no weights) and reads:

    Attributes:
        num_timesteps: ``T``, rows of the routing tables (the grid over ``u`` for continuous processes).
        learn_sigma: the backbone must predict a variance too (``out_channels = 2 * in_channels``); it is
            passed to the backbone's :data:`VARIANCE_PARAM` field.
        samplers: names ``sample.sampler`` may take; ``default_sampler`` (one of them) is used when the
            config names none, ``default_respacing`` when it gives no ``sample.respacing``.
        loss_weightings: names of the loss weightings that apply, or ``None`` for any.

    ``check_sample_settings(sampler, respacing)`` raises a one-line ``ConfigError`` (text starting
    ``sample.sampler: `` or ``sample.respacing: ``) for settings the process cannot sample with.
    ``timestep_sampler()``: its own :class:`TimestepSampler` (used unless the loss weighting needs
    another); the training loop draws ``t`` from it and passes it in (the process never draws it);
    ``training_losses(model, x0, t, model_kwargs, noise)``: per-sample ``[N]`` terms ``loss``, ``mse``
    (and ``vb`` with ``learn_sigma``); ``sample(model, shape, solver, *, noise, model_kwargs, device, ...)``:
    ``[N, C, H, W]``, with ``solver`` a :class:`~dtr_plugins.core.sampling_settings.SolverSettings` (sampler,
    respacing, eta, cfg_scale, cfg_channels, clip_denoised; None: the process's own defaults);
    ``loss_bucket(t, buckets)``: int64 bucket of each ``t`` (0: cleanest);
    ``continuous_tasks(strategy)``: the routing plan's map from ``t`` to tasks, or ``None`` when ``t``
    are the task indices themselves.
    """

    num_timesteps: int
    learn_sigma: bool
    samplers: Sequence[str]
    default_sampler: str
    default_respacing: str
    loss_weightings: Sequence[str] | None

    def check_sample_settings(self, sampler: str, respacing: Any) -> None: ...

    def timestep_sampler(self) -> TimestepSampler: ...

    def training_losses(self, model: Any, x_start: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        noise: Tensor | None = None) -> dict[str, Tensor]: ...

    def sample(self, model: Any, shape: Any, solver: Any = None, **kwargs: Any) -> Tensor: ...

    def loss_bucket(self, t: Tensor, buckets: int) -> Tensor: ...

    def continuous_tasks(self, strategy: Any) -> Any: ...


@runtime_checkable
class SupportsHeldoutLoss(Protocol):
    """Optional capability of a process: the held-out denoising loss per noise band
    (:mod:`dtr_plugins.evaluation.heldout`). ``heldout_time``: ``"discrete"`` (int64 timesteps over equal
    bands of ``[0, T)``) or ``"continuous"`` (float times ``t = 1 - u`` over equal bands of the noise
    level ``u``); ``heldout_target``: what the ``mse`` term of ``training_losses`` measures
    (``"epsilon"``, ``"velocity"``), recorded in meta.json. Without it a run records no held-out loss."""

    heldout_time: Literal["discrete", "continuous"]
    heldout_target: str


@runtime_checkable
class SupportsSolverSteps(Protocol):
    """Optional capability of a process: ``solver_steps(solver)`` is ``(steps, calls)``, the solver steps that
    ``sample`` takes for one batch with ``solver`` (a :class:`~dtr_plugins.core.sampling_settings.SolverSettings`,
    None: the process's defaults) and the network calls they make (Heun over 25 steps: ``(25, 50)``), or None when
    not known in advance (an adaptive solver). The sampling progress bar counts steps with it, its total known from
    the start; without it (or with None) the bar counts network calls."""

    def solver_steps(self, solver: Any = None) -> tuple[int, int] | None: ...


@runtime_checkable
class SupportsSolverOptions(Protocol):
    """Optional capability of a process: ``check_solver_options(solver)`` raises a one-line ``ConfigError`` (text
    starting ``sample.<key>: ``) for a guidance interval, time shift or solver tolerance of ``solver`` (a
    :class:`~dtr_plugins.core.sampling_settings.SolverSettings`) that it cannot apply. A process without it is
    refused any of these settings but the default (:func:`dtr_plugins.core.process.check_solver_options`)."""

    def check_solver_options(self, solver: Any) -> None: ...


@runtime_checkable
class Tracker(Protocol):
    """One experiment tracker (the ``tracker`` kind), driven by the trainer through
    :class:`~dtr_plugins.training.tracker_set.TrackerSet`: it mirrors metrics.jsonl (the source of truth).

    Call order: ``start`` once, then any number of ``log_scalars`` / ``log_image``, then ``finish``.
    """

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        """Open the tracker's run; everything it writes goes under ``run_dir`` unless configured otherwise.

        ``config`` is the resolved experiment config (``ExperimentConfig.to_dict()``), ``run_name`` the
        experiment's ``name``. Raises on a bad setup (the trainer reports it as one line and stops).
        """

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Record ``values`` (flat ``name -> float``, names joined with ``/``) at training step ``step``."""

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Record one picture: ``image`` is ``uint8 [H, W, 3]`` (RGB) at training step ``step``."""

    def finish(self) -> None:
        """Flush and close the run; called once, also when training stopped with an error."""

    def applied(self) -> dict[str, Any]:
        """What this tracker actually uses, for ``meta.json`` (folder, mode, store URI, run id); after ``start``."""


@runtime_checkable
class SupportsTrackerResume(Protocol):
    """Optional capability of a :class:`Tracker`: continue the tracker's own run when training resumes.

    On ``dtr train --resume`` (from a checkpoint) ``resume_from`` is called before ``start`` with what the
    previous segment's ``applied()`` recorded in ``meta.json`` under ``trackers.<name>`` (e.g. its run id),
    so the viewer shows one run, not one per segment. A tracker without it starts a new run.
    """

    def resume_from(self, applied: Mapping[str, Any]) -> None:
        """Remember the run to continue (``applied``: the previous segment's record); ``start`` reopens it."""


@runtime_checkable
class TrackerFactory(Protocol):
    """What a tracker plugin registers: called with its validated params, it returns a :class:`Tracker`.

    ``missing_requirement()`` is asked at config validation (``dtr validate``, before training): ``None``
    when the tracker can run here, else the install command that makes it usable.
    """

    def __call__(self, **params: Any) -> Tracker: ...

    def missing_requirement(self) -> str | None: ...


@dataclass(frozen=True)
class RunSpec:
    """One run a launcher starts: its id, its run directory and the resolved config file to train from."""

    id: str
    run_dir: Path
    config_path: Path


@runtime_checkable
class Launcher(Protocol):
    """The ``launcher`` kind: where and how the runs of a suite are started (the suite engine's view).
    Every launcher keeps the run directory contract: ``<suite>/<run id>/`` holds the run's checkpoints and a
    ``status.json`` whose ``state`` is ``running``, ``done`` or ``failed``."""

    #: ``True`` when :meth:`launch` returns only after the runs ended (a local pool); ``False`` when it
    #: submits them to a scheduler and returns at once.
    blocking: bool

    def launch(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, dict[str, Any]]:
        """Start ``runs``; returns run id -> its record (the final status, or the job it was submitted as)."""

    def active(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        """Run id -> a one-line description of its live job (queued or running), for runs that have one."""

    def wait(self, suite_root: Path, runs: Sequence[RunSpec], timeout_s: float | None = None) -> None:
        """Block until none of ``runs`` has a live job (raises ``TimeoutError`` after ``timeout_s``)."""

    def cancel(self, suite_root: Path, runs: Sequence[RunSpec]) -> list[str]:
        """Cancel the live jobs of ``runs``; returns the ids of the runs whose job was cancelled."""


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The attributes and methods of ``protocol`` that ``obj`` lacks (empty: it satisfies the contract)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or klass.__name__ in ("Protocol", "Generic"):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= set(getattr(klass, "__annotations__", {}))
    names |= {"__call__"} if "__call__" in vars(protocol) else set()
    return sorted(n for n in names if not hasattr(obj, n))


@runtime_checkable
class SupportsStateDictAdapter(Protocol):
    """Optional capability of a model part (a backbone, or a learned strategy inside it): it reads checkpoints
    written in another layout (an official release) by converting the WHOLE model's state dict.

    :func:`~dtr_plugins.core.checkpoint.apply_checkpoint` calls ``adapt_state_dict`` on every submodule of the
    target model that has it, before loading; it returns ``state`` unchanged (the same keys) when the layout is
    already this project's, else a new dict in this project's layout. The loader never knows particular layouts.
    """

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


@runtime_checkable
class Conditioner(Protocol):
    """The ``conditioner`` kind: a frozen text encoder (``clip_text``; docs/text_to_image.md). No gradients and
    no state in checkpoints; training reads its outputs through the text-embedding cache
    (:mod:`dtr_plugins.conditioners.text_cache`), keyed by ``fingerprint()`` and the caption.

    Attributes:
        max_length: tokens ``L`` per text (padded or truncated to it).
        embed_dim: width ``D`` of the token and pooled embeddings.

    ``encode(texts, device=None)``: ``(tokens [B, L, D] float32, pooled [B, D] float32, mask [B, L] bool)``
    on ``device`` (``mask``: real tokens True, padding False; at least one True per row). ``fingerprint()``:
    hex digest of everything that changes the embeddings (weights, tokenizer, ``max_length``), never a path.
    """

    max_length: int
    embed_dim: int

    def encode(self, texts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor, Tensor]: ...

    def fingerprint(self) -> str: ...


@runtime_checkable
class SupportsCaptions(Protocol):
    """Optional capability of a dataset's params model: the data is captioned. ``caption_sets()[i]`` lists the
    captions of item ``i`` (at least one each) and an item's label is its index ``i`` (so a latent cache keeps
    it); each training step draws one of the item's captions (``TextStage``). A text section needs it."""

    def caption_sets(self) -> list[list[str]]: ...


@runtime_checkable
class SupportsCaptionClasses(Protocol):
    """Optional capability of a captioned dataset's params model whose captions name classes (the offline caption
    sets): ``caption_classes()`` maps each caption to its class index, for the prompt-class agreement metric."""

    def caption_classes(self) -> dict[str, int]: ...


@runtime_checkable
class SupportsTextConditioning(Protocol):
    """Optional capability of a backbone: conditioned on text. ``y`` is the packed text condition
    ``[N, text_length + 1, text_dim + 1]`` of :mod:`dtr_plugins.core.text_condition` (tokens, mask, pooled);
    classifier-free guidance uses the empty caption's packed condition as the null ``y``."""

    text_dim: int
    text_length: int
