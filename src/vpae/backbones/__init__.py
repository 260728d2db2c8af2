from vpae.backbones.base import Backbone, resolve_layers
from vpae.backbones.wan import WanBackbone, tiny_wan_config

__all__ = ["Backbone", "WanBackbone", "resolve_layers", "tiny_wan_config"]
