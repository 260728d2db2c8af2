"""Placeholder while the method is written (replaced by its implementation)."""

from vpae.registry import register_method
from vpae.training.methods.base import Method


@register_method("rcm")
class _Pending(Method):
    name = "rcm"

    def phases(self, nets):
        raise NotImplementedError("rcm is being written")
