from vpae.discriminator.heads import HEADS, ConvHead, CrossAttentionHead, SemanticHead, build_head
from vpae.discriminator.self_discriminator import SelfDiscriminator, blur_frames

__all__ = ["HEADS", "ConvHead", "CrossAttentionHead", "SemanticHead", "build_head", "SelfDiscriminator", "blur_frames"]
