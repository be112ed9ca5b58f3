"""Inception-v3 (torch-fidelity's TF-compatible port) with one more feature layer: the spatial features of sFID.

ADM's evaluator (openai/guided-diffusion ``evaluations/evaluator.py``) reads TensorFlow's 2015 Inception graph at
``mixed_6/conv`` and keeps its first 7 channels, ``[N, 17, 17, 7]`` flattened to 2023 values per image, for sFID
(Nash et al. 2021). In that graph the 17 x 17 blocks are ``mixed_4`` .. ``mixed_7``, torch-fidelity's (and
torchvision's) ``Mixed_6b`` .. ``Mixed_6e``, so ``mixed_6`` is ``Mixed_6d`` and its ``conv`` (the first node of the
block) is the 1 x 1 branch ``Mixed_6d.branch1x1`` after its batch norm and ReLU. None of torch-fidelity's layers
(``64``, ``192``, ``768``, ``2048``, logits) is spatial, so :data:`SFID_LAYER` is read from that module's output
with a forward hook, channels ``[:7]``, flattened in ADM's NHWC order (height, width, channel) so that statistics
stored by ADM (``mu_s`` / ``sigma_s``) line up coordinate by coordinate. The other layers are torch-fidelity's own,
unchanged.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["SFID_LAYER", "SFID_CHANNELS", "spatial_inception_class"]

#: the layer name sFID reads (the TensorFlow node's name)
SFID_LAYER = "mixed_6/conv"
#: channels ADM keeps of that node
SFID_CHANNELS = 7


@functools.cache
def spatial_inception_class() -> type:
    """``torch_fidelity``'s ``FeatureExtractorInceptionV3`` plus the layer :data:`SFID_LAYER` (``float32
    [N, 2023]``); registered under ``inception-v3-compat`` in its place (:func:`dtr_plugins.evaluation.features.
    ensure_registered`). torch-fidelity is imported on first use."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class SpatialInceptionV3(FeatureExtractorInceptionV3):
        def __init__(self, name: str, features_list: list[str], **kwargs: Any):
            wanted = list(features_list)
            # the base network stops after the last layer asked: ask it for one past Mixed_6d when only sFID is asked
            base = [f for f in wanted if f != SFID_LAYER]
            if SFID_LAYER in wanted and not set(base) - {"64", "192"}:
                base.append("768")
            super().__init__(name, base, **kwargs)
            self.features_list, self.base = wanted, base  # what callers get; what the base network computes
            self._spatial: torch.Tensor | None = None
            if SFID_LAYER in wanted:
                self.Mixed_6d.branch1x1.register_forward_hook(self._keep)

        def _keep(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
            self._spatial = output[:, :SFID_CHANNELS].permute(0, 2, 3, 1).flatten(1).to(torch.float32)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return (*FeatureExtractorInceptionV3.get_provided_features_list(), SFID_LAYER)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            if metric == "sfid":
                return SFID_LAYER
            return str(FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric))

        @staticmethod
        def can_be_compiled() -> bool:
            return False  # the forward hook

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            wanted, self._spatial = self.features_list, None
            self.features_list = self.base  # the base forward computes (and stops after) the layers in this list
            try:
                out = dict(zip(self.base, super().forward(x), strict=True))
            finally:
                self.features_list = wanted
            if self._spatial is not None:
                out[SFID_LAYER] = self._spatial
            return tuple(out[f] for f in wanted)

    return SpatialInceptionV3
