from vpae.discriminator.feature_discriminator import FeatureDiscriminator, blur_frames
from vpae.discriminator.heads import HEADS, ConvHead, CrossAttentionHead, SemanticHead, build_head

__all__ = ["HEADS", "ConvHead", "CrossAttentionHead", "SemanticHead", "build_head", "FeatureDiscriminator", "blur_frames"]
