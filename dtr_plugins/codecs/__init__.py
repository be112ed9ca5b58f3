"""Codecs: the stage between images and the space a denoiser works in (:class:`dtr_plugins.core.contracts.Codec`).

``identity`` (pixels) and ``autoencoder_kl`` (a frozen diffusers AutoencoderKL) are built in; the latent
cache (:mod:`.latent_cache`) stores a codec's posteriors, keyed by the codec's fingerprint.
"""
