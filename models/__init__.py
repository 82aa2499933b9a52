"""edgepipe models: a registry of small attention CNNs and the attention layers they share.

    import models
    net = models.create("se_resnet", num_classes=10, in_chans=1, img_size=32)
    models.names(); models.model_info("se_resnet"); models.count_macs(net)

timm models are built by ``pipeline.timm_models``, not here.
"""

from . import zoo  # noqa: F401  (registers the built-in models)
from .layers import ATTENTION_KINDS, AttentionPool, create_attention
from .registry import UnknownModelError, count_macs, count_params, create, model_info, names, register_model
