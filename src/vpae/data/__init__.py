"""Data: the procedural toy video world (default, CPU) and its oracle metrics."""

from vpae.data.toy import (  # noqa: F401
    BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS, ToyBatch, ToyVideoParams, ToyWorld,
    ToyWorldConfig, all_captions, caption, parse_caption, render, sample_params, trajectory,
)
