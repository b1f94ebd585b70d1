"""The GAN networks, as plain PyTorch modules (no Ray here: the trainers wrap them; packages rebuild them)."""

from .animegan import AnimeGANDiscriminator, AnimeGANv1Generator, AnimeGANv2Generator
from .cartoongan import CartoonGANDiscriminator, CartoonGANGenerator
from .dcgan import DCGANGenerator
from .layers import NORMS, conv_bias, count_parameters, init_weights, make_norm
from .patchgan import PatchDiscriminator, receptive_field
from .resnet import ResidualBlock, ResNetGenerator
from .unet import UNetGenerator, unet_channels
from .vgg import VGG_LAYER_NAMES, VGG19Features, load_vgg19
from .wrappers import GENERATORS, PadToMultiple, build_generator

__all__ = [
    "AnimeGANDiscriminator",
    "AnimeGANv1Generator",
    "AnimeGANv2Generator",
    "CartoonGANDiscriminator",
    "CartoonGANGenerator",
    "DCGANGenerator",
    "GENERATORS",
    "NORMS",
    "PadToMultiple",
    "PatchDiscriminator",
    "ResNetGenerator",
    "ResidualBlock",
    "UNetGenerator",
    "build_generator",
    "conv_bias",
    "count_parameters",
    "init_weights",
    "make_norm",
    "receptive_field",
    "unet_channels",
    "VGG_LAYER_NAMES",
    "VGG19Features",
    "load_vgg19",
]
