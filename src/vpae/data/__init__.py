"""Data sources for training: batches of (latents, Conditioning), registered by name (vpae.registry): the latent
cache (cache.py) here, the toy world (vpae.toy.data) in its package."""
