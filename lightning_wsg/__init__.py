"""lightning_wsg: weakly supervised phrase grounding by contrastive knowledge distillation."""

__version__ = "0.1.0"
