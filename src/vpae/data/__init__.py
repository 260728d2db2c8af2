"""Data sources for training: batches of (latents, Conditioning). The toy world (vpae.toy.source) is one."""
