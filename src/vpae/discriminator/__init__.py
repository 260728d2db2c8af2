from vpae.discriminator.heads import HEADS, ConvHead, CrossAttentionHead, SemanticHead, build_head
from vpae.discriminator.feature_discriminator import FeatureDiscriminator, blur_frames

__all__ = ["HEADS", "ConvHead", "CrossAttentionHead", "SemanticHead", "build_head", "FeatureDiscriminator", "blur_frames"]
