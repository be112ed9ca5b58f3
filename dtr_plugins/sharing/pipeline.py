"""``DTRPipeline``: a trained model with the hub methods diffusers and huggingface_hub users expect.

``DTRPipeline.from_pretrained(folder_or_hub_id)``, ``pipe.save_pretrained(folder)`` and
``pipe.push_to_hub("ORG/NAME")``, over the same folder layout, loaders and upload as ``dtr export``,
``dtr sample DIR`` and ``dtr push`` (:mod:`dtr_plugins.sharing.hub`, :mod:`dtr_plugins.sharing.push`).

It follows the method names and keywords of :class:`huggingface_hub.ModelHubMixin` without inheriting
from it: the mixin's ``from_pretrained`` fetches ``config.json`` from the hub before the subclass is asked
(this project's loader looks in the local cache first, honours ``HF_HUB_OFFLINE`` with one line, and reads
diffusers folders and pipelines too), and its ``save_pretrained`` writes ``config.json`` from the
constructor's arguments, where an export holds the resolved run config and an export record. The model
card's front matter is huggingface_hub's ``ModelCardData`` (:mod:`dtr_plugins.sharing.model_card`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtr_plugins.core.errors import UserError
from dtr_plugins.sharing.hub import (
    CARD_FILE,
    EXPORT_FORMAT,
    EXPORT_KEY,
    HUB_PREFIX,
    RunWeights,
    _load,
    _read_config,
    parse_hub_id,
    resolve,
    run_weights,
    write_export,
)

if TYPE_CHECKING:
    from dtr_plugins.core.config import ExperimentConfig
    from dtr_plugins.core.contracts import Codec, DiffusionProcess
    from dtr_plugins.core.routing import RoutedBackbone


@dataclass
class DTRPipeline:
    """A model ready to sample: backbone (eval mode, routing plan attached), its config, codec and process.

    Sample with ``dp.generate(pipe.model, pipe.diffusion, pipe.cfg, 16, codec=pipe.codec)`` (uint8 NHWC
    arrays). ``record``: where the weights came from (``weights`` ema/model/diffusers, ``step``,
    ``checkpoint``, ``weights_sha256`` of the folder it was loaded from); ``evaluation`` / ``meta``: the
    run's ``eval.json`` / ``meta.json`` for the model card (a pipeline built from a run); ``card``: the
    ``README.md`` of the folder it was loaded from, written again by :meth:`save_pretrained` only while the
    weights are unchanged (same SHA-256), since its metrics describe those weights.
    """

    model: RoutedBackbone
    cfg: ExperimentConfig
    codec: Codec
    record: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    card: str | None = None
    _diffusion: DiffusionProcess | None = field(default=None, repr=False)

    @property
    def diffusion(self) -> DiffusionProcess:
        """The diffusion process of ``cfg`` (``compose.build_diffusion``), built once."""
        if self._diffusion is None:
            from dtr_plugins.compose import build_diffusion

            self._diffusion = build_diffusion(self.cfg)
        return self._diffusion

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        device: Any = None) -> DTRPipeline:
        """Load an exported folder, a diffusers DiT folder or pipeline, or a hub id (``ORG/NAME``,
        ``hf://ORG/NAME[@REVISION]``; ``revision`` for a hub id), as :func:`~dtr_plugins.sharing.hub.from_pretrained`
        does. The model is in eval mode on ``device`` (default CPU). Raises :class:`CheckpointError` (one line)."""
        source = str(pretrained_model_name_or_path)
        if revision is not None:
            parsed = parse_hub_id(source)
            if parsed is None or parsed[1] is not None or Path(source).expanduser().exists():
                raise UserError(f"from_pretrained: revision={revision!r} applies to a hub id without @REVISION, "
                                f"not to {source!r}")
            source = f"{HUB_PREFIX}{parsed[0]}@{revision}"
        folder = resolve(source)
        cfg, parts, info = _load(folder)
        config = _read_config(folder) if (folder / "config.json").is_file() else {}
        stored = config.get(EXPORT_KEY)
        record = dict(stored) if isinstance(stored, dict) else \
            {"format": EXPORT_FORMAT, "weights": info["weights"], "step": info["step"], "checkpoint": None}
        card = (folder / CARD_FILE).read_text() if isinstance(stored, dict) and (folder / CARD_FILE).is_file() else None
        model = parts.model if device is None else parts.model.to(device)
        return cls(model.eval(), cfg, parts.codec, record=record, card=card, _diffusion=parts.diffusion)

    @classmethod
    def from_run(cls, run: str | Path, *, weights: str = "ema", allow_unsafe_load: bool = False,
                 device: Any = None) -> DTRPipeline:
        """The ``weights`` (``ema``/``model``) of a run directory's newest checkpoint or of one checkpoint
        file, with the run's ``eval.json`` and ``meta.json`` for the card (what ``dtr export`` reads)."""
        from dtr_plugins.compose import build_codec

        found = run_weights(run, weights=weights, allow_unsafe_load=allow_unsafe_load)
        model = found.model if device is None else found.model.to(device)
        return cls(model.eval(), found.cfg, build_codec(found.cfg), record=found.record,
                   evaluation=found.evaluation, meta=found.meta)

    def save_pretrained(self, save_directory: str | Path, *, push_to_hub: bool = False, repo_id: str | None = None,
                        **push_to_hub_kwargs: Any) -> Path:
        """Write the model to the new (or empty) folder ``save_directory`` in the layout of ``dtr export``:
        ``model.safetensors`` (the current weights of ``model``), ``config.json`` (the config and the export
        record) and ``README.md`` (the model card); complete or absent. ``from_pretrained`` of that folder
        gives identical weights. With ``push_to_hub``, then uploads it to ``repo_id`` (default: the folder's
        name) with :meth:`push_to_hub`'s keywords. Returns the folder. Raises :class:`UserError` (one line)."""
        out = Path(save_directory)
        found = RunWeights(self.model, self.cfg, {**self.record, "format": EXPORT_FORMAT}, self.evaluation, self.meta)
        write_export(found, out, layout="dtr", card=self.card)
        if push_to_hub:
            from dtr_plugins.sharing.push import push

            push(out, repo_id or out.name, **push_to_hub_kwargs)
        return out

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None) -> str:
        """Save the model (:meth:`save_pretrained`) to a temporary folder and upload it to the hub repo
        ``repo_id`` (``ORG/NAME``, created if needed), as ``dtr push`` does; returns the commit URL. The token
        comes from ``token`` or huggingface_hub's usual places and is never printed. Raises :class:`UserError`."""
        from dtr_plugins.sharing.push import push

        with tempfile.TemporaryDirectory(prefix="dtr-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            return push(folder, repo_id, private=private, token=token,
                        commit_message=commit_message or f"Upload {self.cfg.name} with dtr-plugins")


__all__ = ["DTRPipeline"]
