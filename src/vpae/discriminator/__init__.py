from vpae.discriminator.heads import HEADS, ConvHead, CrossAttentionHead, SemanticHead, build_head
from vpae.discriminator.self_discriminator import SelfDiscriminator

__all__ = ["HEADS", "ConvHead", "CrossAttentionHead", "SemanticHead", "build_head", "SelfDiscriminator"]
