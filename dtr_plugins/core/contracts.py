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
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["RoutingStrategy", "LearnedRoutingStrategy", "Backbone", "Codec", "LossWeighting", "Dataset",
           "FeatureExtractor", "InputSpace", "SupportsStateDictAdapter",
           "missing_members"]

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
       routing site (``input``; backbones refuse other sites for learned strategies); ``cond_dim``: width of
       the backbone's conditioning vector ``cond`` (DiT: ``hidden_size``; None: the backbone gives none).
    2. ``layer_gate(layer, x, tasks, cond)`` -- in every forward pass, once per routed layer, with the
       block input ``x``: DiT tokens ``[N, L, C]``, ADM feature maps ``[N, C, H, W]``. ``tasks``: ``[N]``
       int64 timestep indices in ``0..T-1``, or float32 noise levels ``u`` in ``[0, 1]`` (0 clean) under a
       continuous process (flow matching; a strategy that cannot route them raises a one-line
       :class:`~dtr_plugins.core.errors.ConfigError`). ``cond``: ``[N, cond_dim]`` or None. Returns a gate
       broadcastable against ``x`` in its layout: ``[N, 1, C]`` or ``[N, L, C]`` for tokens, ``[N, C, 1, 1]``
       or ``[N, C, H, W]`` for feature maps (:func:`~dtr_plugins.core.routing.gate_like` lays ``[N, C]``
       rows out for either), dtype of ``x``.
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
        null_class: the label meaning "no class" for classifier-free guidance; ``None``: no guidance.
        input_space: class attribute, ``"pixels"`` (the default of ``RoutedBackbone``) or ``"latents"``.
            A latent backbone is built with ``in_channels`` and ``input_size`` of the codec's latents
            (filled in by the composition root when its params leave them unset; refused when they
            disagree); a pixel backbone refuses a non-identity codec.

    ``routed_channels(site)`` lists the unit count (channels at the ``input`` site) of every routed layer in
    forward order (it must not depend on the weights); ``routing_sites`` (class attribute) names the sites a
    routing may act on; ``attach_routing(plan)`` receives the :class:`~dtr_plugins.core.routing.RoutingPlan`
    built for those widths.
    """

    in_channels: int
    input_size: int
    num_classes: int | None

    @property
    def null_class(self) -> int | None: ...

    def routed_channels(self, site: str = "input") -> list[int]: ...

    def attach_routing(self, plan: Any) -> None: ...

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor: ...


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
    """Timestep sampling and per-sample losses -> the scalar training loss (an ``nn.Module``; see
    :class:`dtr_plugins.weighting.base.LossWeighting`, the base class that gives the defaults).

    Each training step: ``t = sample_timesteps(N, T, device)`` (int64 ``[N]``, from the global torch
    generator), ``loss = weighting(terms, t, diffusion)`` with ``terms`` the ``[N]`` tensors ``loss``,
    ``mse`` and (learned sigma) ``vb`` of ``diffusion.training_losses``. ``param_groups()`` are added to
    the optimizer, ``state_dict()`` goes into checkpoints, ``log_values()`` into metrics.jsonl.
    """

    def sample_timesteps(self, batch_size: int, num_timesteps: int, device: Any = None) -> Tensor: ...

    def __call__(self, terms: dict[str, Tensor], t: Tensor, diffusion: Any) -> Tensor: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def log_values(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class Dataset(Protocol):
    """A map-style dataset of ``(image, label)``: image float ``[C, H, W]`` in ``[-1, 1]``, label an int
    in ``0..num_classes-1`` (0 for unconditional data). ``num_classes``: the number of labels."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


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
