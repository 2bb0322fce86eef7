"""salt_hf: SALT (small-model-aided large-model training, https://arxiv.org/abs/2410.18779) for Hugging Face."""

__version__ = "0.1.0"

from .config import SALTConfig
from .losses import kd_loss, nll_loss, reference_salt_loss, salt_loss
from .schedules import kd_weight
from .teacher import Teacher
from .trainer import SALTTrainer

__all__ = [
    "SALTConfig",
    "SALTTrainer",
    "Teacher",
    "__version__",
    "kd_loss",
    "kd_weight",
    "nll_loss",
    "reference_salt_loss",
    "salt_loss",
]
