"""diffusers interop for DiT: ``DiTTransformer2DModel`` weights in and out, and DiT with diffusers' numerics.

Two layouts hold the same DiT weights:

- the official DiT layout (this project's ``dit``): ``x_embedder``, ``t_embedder``, ``y_embedder``,
  ``blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}``, ``final_layer``;
- diffusers' ``DiTTransformer2DModel`` (``diffusers/models/transformers/dit_transformer_2d.py``):
  ``pos_embed.proj``, ``transformer_blocks.N.{attn1.to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2,
  norm1.linear, norm1.emb.*}``, ``proj_out_1``, ``proj_out_2``.

:func:`diffusers_to_dit_state` and :func:`dit_to_diffusers_state` map one to the other (pure functions on
state dicts); :func:`dit_params_from_diffusers_config` and :func:`diffusers_config_from_dit` map configs.

What differs besides names, and how it is handled:

1. **Timestep frequencies.** DiT's ``TimestepEmbedder`` uses ``f_i = 10000 ** (-i / 128)``, diffusers'
   ``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`` uses ``f_i = 10000 ** (-i / 127)``
   (both ``[cos, sin]``). No relabelling of weights makes the two equal, so a diffusers DiT loads into
   :class:`DiffusersDiT` (backbone ``dit_diffusers``): this project's DiT with diffusers' frequencies,
   which reproduces diffusers' forward exactly. A ``dit`` exported to the diffusers layout gets its
   first time-MLP layer refitted (:func:`refit_time_linear`, ridge least squares over the integer
   timesteps ``0 .. T-1`` the model is called with) so that diffusers' embedding is as close as a
   linear map allows; the remaining deviation is measured and returned (it is not zero).
2. **MLP LayerNorm epsilon.** diffusers uses ``norm_eps`` (default ``1e-5``) before the MLP, DiT ``1e-6``;
   :class:`DiffusersDiT` takes it as ``mlp_norm_eps``; an export writes ``norm_eps: 1e-6`` for a ``dit``.
3. **Conditioning embedders per block.** diffusers keeps a copy of the timestep and label embedders in
   every block (the final layer uses block 0's). DiT has one; export writes it into every block, import
   requires the copies to be equal (else :class:`CheckpointError`: such a model is not a DiT).
4. **Null class.** diffusers' label table always has ``num_classes + 1`` rows. A DiT without a null class
   (``class_dropout_prob: 0`` or one class) exports with an extra all-zero row (never used).
5. **qkv.** DiT's fused ``qkv`` (rows q, k, v) is split into ``to_q``, ``to_k``, ``to_v`` and back.
6. The position embedding is a non-persistent buffer in diffusers; it is recomputed (``sincos_2d``).

A routed model (any routing but ``vanilla``) has no diffusers counterpart: it exports to this project's
own layout only. diffusers' MLP width is fixed at ``4 * hidden_size`` (``mlp_ratio: 4`` only).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import torch
from pydantic import Field

from dtr_plugins.backbones.dit import DiT, DiTBlock, DiTParams, TimestepEmbedder, sincos_2d
from dtr_plugins.backbones.latent_dit import LatentDiT, LatentDiTParams
from dtr_plugins.core.errors import CheckpointError, UserError
from dtr_plugins.core.hookspecs import hookimpl

DIFFUSERS_CLASS = "DiTTransformer2DModel"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
#: diffusers' default ``norm_eps`` and DiT's LayerNorm epsilon.
DIFFUSERS_NORM_EPS = 1e-5
DIT_NORM_EPS = 1e-6
_FREQ_DIM = 256


def diffusers_timestep_embedding(t: torch.Tensor, dim: int = _FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """diffusers' ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=1)``: ``[N, dim]``.

    ``[cos(t * f), sin(t * f)]`` with ``f_i = max_period ** (-i / (dim / 2 - 1))`` (DiT divides by
    ``dim / 2``). Source: ``get_timestep_embedding`` in ``diffusers/models/embeddings.py``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    args = t[:, None].float() * torch.exp(exponent)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class DiffusersTimestepEmbedder(TimestepEmbedder):
    """DiT's timestep MLP fed with diffusers' frequencies (same parameters and keys)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = diffusers_timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(next(self.mlp.parameters()).dtype))


def _int(value: Any) -> int:
    """A DiT size attribute (``int | None`` until the model is built; always set on a built model)."""
    assert value is not None
    return int(value)


def _use_diffusers_numerics(model: DiT, mlp_norm_eps: float) -> None:
    embedder = DiffusersTimestepEmbedder(_int(model.hidden_size), model.t_embedder.frequency_embedding_size)
    embedder.load_state_dict(model.t_embedder.state_dict())
    model.t_embedder = embedder
    for block in model.blocks:  # read back by diffusers_config_from_dit (norm_eps)
        cast(DiTBlock, block).norm2.eps = mlp_norm_eps


class DiffusersDiTParams(DiTParams):
    """DiT's parameters plus diffusers' ``norm_eps`` (the LayerNorm before each block's MLP)."""

    mlp_norm_eps: float = Field(DIFFUSERS_NORM_EPS, gt=0, description="LayerNorm epsilon before each MLP "
                                "(diffusers' norm_eps; DiT uses 1e-6)")


class LatentDiffusersDiTParams(LatentDiTParams):
    mlp_norm_eps: float = Field(DIFFUSERS_NORM_EPS, gt=0, description="LayerNorm epsilon before each MLP "
                                "(diffusers' norm_eps; DiT uses 1e-6)")


class DiffusersDiT(DiT):
    """This project's DiT (routed blocks, official key layout) computing exactly what diffusers'
    ``DiTTransformer2DModel`` computes: diffusers' timestep frequencies and MLP LayerNorm epsilon.
    ``model(x, t, y=None)`` as :class:`~dtr_plugins.backbones.dit.DiT`."""

    def __init__(self, *, mlp_norm_eps: float = DIFFUSERS_NORM_EPS, **params: Any):
        super().__init__(**params)
        _use_diffusers_numerics(self, mlp_norm_eps)


class LatentDiffusersDiT(LatentDiT):
    """:class:`DiffusersDiT` on VAE latents (a diffusers DiT pipeline: ``transformer/`` with ``vae/``)."""

    def __init__(self, *, mlp_norm_eps: float = DIFFUSERS_NORM_EPS, **params: Any):
        super().__init__(**params)
        _use_diffusers_numerics(self, mlp_norm_eps)


@hookimpl
def dtr_register_backbones(register: Callable[..., None]) -> None:
    register("dit_diffusers", DiffusersDiT, params=DiffusersDiTParams,
             description="DiT with diffusers' timestep frequencies and norm_eps (loads DiTTransformer2DModel exactly)")
    register("latent_dit_diffusers", LatentDiffusersDiT, params=LatentDiffusersDiTParams,
             description="latent_dit with diffusers' numerics (a diffusers DiT pipeline: transformer + vae)")


class DiffusersAdapter:
    """:class:`~dtr_plugins.core.contracts.StateDictAdapter` of the DiT family <-> diffusers'
    ``DiTTransformer2DModel``. ``loads``: a diffusers folder loads into this backbone exactly (the
    ``*_diffusers`` backbones, with diffusers' numerics); a plain ``dit`` / ``latent_dit`` only exports."""

    layout = "diffusers"
    weights_file = DIFFUSERS_WEIGHTS

    def __init__(self, input_space: Literal["pixels", "latents"], loads: bool):
        self.input_space: Literal["pixels", "latents"] = input_space
        self.loads = loads

    def reads(self, config: Mapping[str, Any]) -> bool:
        return self.loads and is_diffusers_dit_config(config)

    def params_from_foreign_config(self, config: Mapping[str, Any], *, source: str) -> dict[str, Any]:
        return dit_params_from_diffusers_config(config, source=source)

    def from_foreign_state_dict(self, state: Mapping[str, torch.Tensor], params: Mapping[str, Any], *,
                                source: str) -> dict[str, torch.Tensor]:
        return diffusers_to_dit_state(state, num_classes=int(params["num_classes"]),
                                      input_size=int(params["input_size"]), patch_size=int(params["patch_size"]),
                                      source=source)

    def to_foreign_state_dict(self, model: Any, state: Mapping[str, torch.Tensor], *, num_timesteps: int
                              ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        if not isinstance(model, DiT):
            raise UserError(f"--format diffusers: a {type(model).__name__} is not a DiT")
        return export_state_for_diffusers(model, state, num_timesteps)


@hookimpl
def dtr_register_state_dict_adapters(register: Callable[..., None]) -> None:
    adapters: tuple[tuple[str, Literal["pixels", "latents"], bool], ...] = (
        ("dit", "pixels", False), ("latent_dit", "latents", False),
        ("dit_diffusers", "pixels", True), ("latent_dit_diffusers", "latents", True))
    for backbone, space, loads in adapters:
        register(backbone, functools.partial(DiffusersAdapter, space, loads),
                 description=f"{backbone} <-> diffusers DiTTransformer2DModel weights"
                             + ("" if loads else " (export only)"))


#################################################################################
#                                  Configs                                      #
#################################################################################

def dit_params_from_diffusers_config(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """A ``DiTTransformer2DModel`` config -> ``dit_diffusers`` parameters; anything DiT cannot express is a
    :class:`CheckpointError` naming the key."""
    if config.get("_class_name") != DIFFUSERS_CLASS:
        raise CheckpointError(f"{source}: _class_name is {config.get('_class_name')!r}, expected {DIFFUSERS_CLASS!r}")
    required = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
                "attention_bias": True}
    for key, allowed in required.items():
        if config.get(key, allowed) != allowed:
            raise CheckpointError(f"{source}: {key}={config[key]!r} has no DiT counterpart (allowed: {allowed!r})")
    heads = int(config.get("num_attention_heads", 16))
    in_channels = int(config.get("in_channels", 4))
    out_channels = config.get("out_channels")
    out_channels = in_channels if out_channels is None else int(out_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"{source}: out_channels={out_channels} must be in_channels ({in_channels}) or twice it "
                              "(learned variance)")
    num_classes = config.get("num_embeds_ada_norm", 1000)
    if num_classes is None:
        raise CheckpointError(f"{source}: num_embeds_ada_norm is null; a DiT needs the number of classes")
    return {"input_size": int(config.get("sample_size", 32)), "patch_size": int(config.get("patch_size", 2)),
            "in_channels": in_channels, "hidden_size": heads * int(config.get("attention_head_dim", 72)),
            "depth": int(config.get("num_layers", 28)), "num_heads": heads, "mlp_ratio": 4.0,
            "num_classes": int(num_classes), "class_dropout_prob": 0.1,
            "learn_sigma": out_channels == 2 * in_channels,
            "mlp_norm_eps": float(config.get("norm_eps", DIFFUSERS_NORM_EPS))}


def diffusers_config_from_dit(model: DiT) -> dict[str, Any]:
    """The ``DiTTransformer2DModel`` config of ``model`` (``config.json`` of a diffusers folder)."""
    block, hidden, heads = cast(DiTBlock, model.blocks[0]), _int(model.hidden_size), _int(model.num_heads)
    mlp_width = block.mlp.fc1.out_features
    if mlp_width != 4 * hidden:
        raise CheckpointError(f"mlp_ratio={mlp_width / hidden:g}: diffusers' "
                              "DiTTransformer2DModel has a fixed MLP width of 4 * hidden_size (mlp_ratio 4 only)")
    try:
        from diffusers import __version__ as version
    except ImportError:
        version = "0.25.0"
    return {"_class_name": DIFFUSERS_CLASS, "_diffusers_version": version,
            "num_attention_heads": model.num_heads, "attention_head_dim": hidden // heads,
            "in_channels": model.in_channels, "out_channels": model.out_channels, "num_layers": model.depth,
            "dropout": 0.0, "norm_num_groups": 32, "attention_bias": True, "sample_size": model.input_size,
            "patch_size": model.patch_size, "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": model.num_classes, "upcast_attention": False, "norm_type": "ada_norm_zero",
            "norm_elementwise_affine": False, "norm_eps": float(block.norm2.eps)}


#################################################################################
#                                State dicts                                    #
#################################################################################

_EMB = "transformer_blocks.{i}.norm1.emb."
#: DiT key -> diffusers key for everything but qkv and the per-block embedders.
_BLOCK_KEYS = {"attn.proj": "attn1.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2",
               "adaLN_modulation.1": "norm1.linear"}
_TOP_KEYS = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
             "final_layer.linear": "proj_out_2"}
_EMB_KEYS = {"t_embedder.mlp.0": "timestep_embedder.linear_1", "t_embedder.mlp.2": "timestep_embedder.linear_2"}


def _depth_of(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    if not found or found != set(range(max(found) + 1)):
        raise CheckpointError(f"expected blocks {prefix}0 .. {prefix}N, found {sorted(found)[:8]}")
    return max(found) + 1


def _take(state: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing tensor {key!r}")
    return state[key]


def dit_to_diffusers_state(state: Mapping[str, torch.Tensor], *, null_row: bool = False) -> dict[str, torch.Tensor]:
    """DiT state dict -> ``DiTTransformer2DModel`` state dict (no refitting: the time MLP is copied as is).

    ``null_row``: append an all-zero row to the label table (a DiT without a null class; diffusers' table
    always has ``num_classes + 1`` rows). ``pos_embed`` is dropped (a non-persistent buffer in diffusers).
    """
    src = "DiT state dict"
    depth = _depth_of(state, "blocks.")
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _TOP_KEYS.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = _take(state, f"{ours}.{p}", src)
    table = _take(state, "y_embedder.embedding_table.weight", src)
    if null_row:
        table = torch.cat([table, torch.zeros_like(table[:1])])
    for i in range(depth):
        emb = _EMB.format(i=i)
        for ours, theirs in _EMB_KEYS.items():
            for p in ("weight", "bias"):
                out[f"{emb}{theirs}.{p}"] = _take(state, f"{ours}.{p}", src).clone()  # a copy per block
        out[f"{emb}class_embedder.embedding_table.weight"] = table.clone()
        for ours, theirs in _BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                out[f"transformer_blocks.{i}.{theirs}.{p}"] = _take(state, f"blocks.{i}.{ours}.{p}", src)
        for p in ("weight", "bias"):
            q, k, v = _take(state, f"blocks.{i}.attn.qkv.{p}", src).chunk(3, dim=0)
            for name, part in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"transformer_blocks.{i}.attn1.{name}.{p}"] = part
    return {k: v.contiguous() for k, v in out.items()}


def diffusers_to_dit_state(state: Mapping[str, torch.Tensor], *, num_classes: int, input_size: int,
                           patch_size: int, source: str = DIFFUSERS_WEIGHTS) -> dict[str, torch.Tensor]:
    """``DiTTransformer2DModel`` state dict -> DiT state dict (``pos_embed`` recomputed with ``sincos_2d``).

    The per-block timestep and label embedders must be identical (DiT has one); a model with one class
    keeps only row 0 of the label table. Raises :class:`CheckpointError` naming ``source``.
    """
    depth = _depth_of(state, "transformer_blocks.")
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _TOP_KEYS.items():
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = _take(state, f"{theirs}.{p}", source)
    emb_keys = [(f"{ours}.{p}", f"{theirs}.{p}") for ours, theirs in _EMB_KEYS.items() for p in ("weight", "bias")]
    emb_keys.append(("y_embedder.embedding_table.weight", "class_embedder.embedding_table.weight"))
    for ours, theirs in emb_keys:
        first = _take(state, _EMB.format(i=0) + theirs, source)
        for i in range(1, depth):
            if not torch.equal(_take(state, _EMB.format(i=i) + theirs, source), first):
                raise CheckpointError(f"{source}: block {i} has its own {theirs} (differs from block 0); DiT shares "
                                      "one timestep and label embedder across blocks, so this model cannot be loaded")
        out[ours] = first
    if num_classes == 1:
        out["y_embedder.embedding_table.weight"] = out["y_embedder.embedding_table.weight"][:1]
    for i in range(depth):
        for ours, theirs in _BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = _take(state, f"transformer_blocks.{i}.{theirs}.{p}", source)
        for p in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(
                [_take(state, f"transformer_blocks.{i}.attn1.{n}.{p}", source) for n in ("to_q", "to_k", "to_v")])
    hidden = out["x_embedder.proj.weight"].shape[0]
    pos = sincos_2d(hidden, input_size // patch_size)
    out["pos_embed"] = torch.from_numpy(pos).float().unsqueeze(0)
    return {k: v.contiguous() for k, v in out.items()}


#################################################################################
#                       Time embedding refit (dit -> diffusers)                 #
#################################################################################

def refit_time_linear(weight: torch.Tensor, num_timesteps: int,
                      ridge: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Refit the first time-MLP layer of a DiT for diffusers' frequencies.

    ``weight``: ``t_embedder.mlp.0.weight`` ``[hidden, 256]``. Returns ``W'`` minimising
    ``sum_t |W' phi_diffusers(t) - W phi_dit(t)|^2 + ridge * |W' - W|^2`` over the timesteps
    ``t = 0 .. num_timesteps - 1`` (the indices the diffusion calls the model with), and the deviation of
    the first layer's output (``max_abs``, ``rms``, and ``rms_ref``, the rms of the reference output) for
    the refit and for plain copying (``copy_max_abs``, ``copy_rms``). The ridge term keeps ``W'`` close
    to ``W`` (least squares alone gives huge, ill-conditioned weights).
    """
    from dtr_plugins.backbones.dit import timestep_embedding

    t = torch.arange(num_timesteps, dtype=torch.float64)
    dim = weight.shape[1]
    ours = timestep_embedding(t, dim).double()                 # [T, 256]
    theirs = diffusers_timestep_embedding(t, dim).double()     # [T, 256]
    w = weight.detach().double().cpu()
    target = ours @ w.T                                        # [T, hidden]
    gram = theirs.T @ theirs + ridge * torch.eye(dim, dtype=torch.float64)
    fitted = torch.linalg.solve(gram, theirs.T @ target + ridge * w.T).T
    resid, copy_resid = theirs @ fitted.T - target, theirs @ w.T - target
    report = {"max_abs": float(resid.abs().max()), "rms": float(resid.pow(2).mean().sqrt()),
              "copy_max_abs": float(copy_resid.abs().max()), "copy_rms": float(copy_resid.pow(2).mean().sqrt()),
              "rms_ref": float(target.pow(2).mean().sqrt()), "timesteps": num_timesteps, "ridge": ridge}
    return fitted.to(weight.dtype), report


def is_diffusers_exportable(model: Any) -> bool:
    """Whether ``model`` has diffusers' ``DiTTransformer2DModel`` layout (a DiT; this plugin's own check)."""
    return isinstance(model, DiT)


def export_state_for_diffusers(model: DiT, state: Mapping[str, torch.Tensor], num_timesteps: int
                               ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(diffusers state dict, diffusers config, notes)`` for a vanilla DiT ``model`` with weights ``state``.

    A :class:`DiffusersDiT` converts exactly; a plain DiT gets :func:`refit_time_linear` (its report is
    ``notes["time_embedding"]``). ``num_timesteps``: the diffusion's training steps ``T``.
    """
    config = diffusers_config_from_dit(model)
    state = dict(state)
    notes: dict[str, Any] = {"null_row_added": model.null_class is None}
    if isinstance(model.t_embedder, DiffusersTimestepEmbedder):
        notes["time_embedding"] = "exact (diffusers frequencies)"
    else:
        key = "t_embedder.mlp.0.weight"
        state[key], notes["time_embedding"] = refit_time_linear(state[key], num_timesteps)
    return dit_to_diffusers_state(state, null_row=model.null_class is None), config, notes


def is_diffusers_dit_config(config: Any) -> bool:
    return isinstance(config, Mapping) and config.get("_class_name") == DIFFUSERS_CLASS

