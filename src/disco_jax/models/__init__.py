"""Networks built from DISCO layers, one family per module."""

from disco_jax.models.detector import Detector as Detector
from disco_jax.models.edsr import EDSR as EDSR
from disco_jax.models.resnet import (
    NETWORKS as NETWORKS,
    BasicBlock as BasicBlock,
    Bottleneck as Bottleneck,
    ResNet as ResNet,
    ResNet18 as ResNet18,
    ResNet34 as ResNet34,
    ResNet50 as ResNet50,
    ResNet101 as ResNet101,
)
from disco_jax.models.segmenter import Segmenter as Segmenter
from disco_jax.models.swinir import SwinIR as SwinIR
from disco_jax.models.vit import ViT as ViT
