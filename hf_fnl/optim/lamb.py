"""LAMB as NVIDIA's BERT recipe uses it (You et al. 2020): Adam moments with bias correction,
weight decay inside the update, layer-wise trust ratio ‖p‖/‖u‖ (1 where either norm is 0).

Defaults: betas (0.9, 0.999), eps 1e-6. Global gradient-norm clipping (1.0 in the recipe) is done
before the step by the trainer/accelerator, as in the recipe. `trust_ratio_on="decayed"` restricts
the trust ratio to tensors with nonzero decay, as NVIDIA's FusedLAMB does by default.
"""

from .decoupled import DecoupledDecayAdam

__all__ = ["Lamb"]


class Lamb(DecoupledDecayAdam):
    use_trust_ratio = True
    accepts_fd = False
