"""The held-out split of a run's data, opened once when the run is composed.

:func:`compose` opens it beside the training data (``Components.heldout_data``), so ``dtr validate`` finds a
missing or broken split (Fashion-MNIST's ``t10k-*`` files) with the same line ``dtr train`` would give, and
training builds its fixed held-out inputs (:class:`~dtr_plugins.evaluation.heldout.HeldOutSet`) from that one
dataset object. A run measures no held-out loss, and opens no split, for the reason
:func:`heldout_skip_reason` gives; a dataset that declares no split (its params model has no
``heldout_split()``, or it returns None) is noted, not refused.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import SupportsHeldoutLoss, SupportsHeldoutSplit
from dtr_plugins.core.errors import ConfigError, DataError
from dtr_plugins.core.plugins import PluginRegistry

__all__ = ["heldout_dataset_params", "heldout_skip_reason", "open_heldout_split"]


def heldout_dataset_params(dataset_name: str, params_model: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``dataset_name``'s held-out split, as its params model declares them
    (:class:`~dtr_plugins.core.contracts.SupportsHeldoutSplit`: the same data, never augmented).

    ``params_model`` is the dataset plugin's pydantic params class (``registry.get("dataset", name).params``).
    Raises :class:`ConfigError` naming the dataset when it declares no held-out split, or when these
    ``params`` hold nothing out (``heldout_split()`` returns None: an image folder with ``heldout_fraction`` 0).
    """
    validated = params_model.model_validate(dict(params))
    if not isinstance(validated, SupportsHeldoutSplit):
        raise ConfigError(f"data.name: dataset '{dataset_name}' declares no held-out split (its params model has no "
                          f"heldout_split(); see SupportsHeldoutSplit in dtr_plugins/core/contracts.py); set "
                          f"eval.heldout_every: 0 or use digits, synthetic or image_folder")
    split = validated.heldout_split()
    if split is None:
        raise ConfigError(f"data: dataset '{dataset_name}' holds no images out with these parameters (for "
                          f"image_folder set data.heldout_fraction above 0, e.g. 0.1); set eval.heldout_every: 0 "
                          f"to say so")
    out: dict[str, Any] = split.model_dump()
    return out


def heldout_skip_reason(cfg: ExperimentConfig, diffusion: Any, cached: bool) -> str | None:
    """Why a run measures no held-out loss, or None when it does (its data may still declare no held-out
    split): ``eval.heldout_every`` is 0, the process ``diffusion`` defines no held-out loss
    (:class:`~dtr_plugins.core.contracts.SupportsHeldoutLoss`), the run is text-to-image, or it trains from a
    latent cache (``cached``). Training records the reason in ``meta.json``."""
    if not cfg.eval.heldout_every:
        return "eval.heldout_every is 0"
    if not isinstance(diffusion, SupportsHeldoutLoss):
        return f"no held-out loss defined for the process {cfg.diffusion.name!r}"
    if cfg.text is not None:  # a held-out split's labels index another caption list
        return "text-to-image run (held-out loss not defined for captions yet)"
    if cached:  # encoding held-out images would load the VAE that a cached run never needs
        return "training from a latent cache (no cached held-out latents)"
    return None


def open_heldout_split(cfg: ExperimentConfig, registry: PluginRegistry, diffusion: Any,
                       cached: bool) -> tuple[Any, str]:
    """``(dataset, "")``: the held-out split of ``cfg``'s data, opened, or ``(None, why)`` when the run
    measures no held-out loss (:func:`heldout_skip_reason`) or its data declares no split.

    Raises :class:`ConfigError` (one line naming ``eval.heldout_every``) when the run measures held-out loss
    and its declared split cannot be read or is empty: the run would otherwise train without its primary
    metric."""
    why = heldout_skip_reason(cfg, diffusion, cached)
    if why is not None:
        return None, why
    try:
        params = heldout_dataset_params(cfg.dataset.name, registry.get("dataset", cfg.dataset.name).params,
                                        cfg.dataset.params)
    except ConfigError as exc:
        return None, str(exc)
    try:
        dataset = registry.build("dataset", cfg.dataset.name, **params)
        if len(dataset) == 0:
            raise DataError("it has no images")
    except DataError as exc:
        raise ConfigError(f"eval.heldout_every: the held-out split of data '{cfg.dataset.name}' cannot be read "
                          f"({exc}); fix the data, or set eval.heldout_every: 0 to train without held-out loss"
                          ) from None
    return dataset, ""
