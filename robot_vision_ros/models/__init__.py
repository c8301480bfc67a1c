"""Pure PyTorch model zoo: ``create_model('resnet18', output_dim=0, weights='imagenet')``."""
from .encoders.base import EncoderOutput, VisionEncoder
from .registry import create_model, list_models
from .weights import LoadReport, load_weights

__all__ = ["EncoderOutput", "LoadReport", "VisionEncoder", "create_model", "list_models",
           "load_weights"]
