"""FLAMBé: LAMB with decoupled Frobenius decay on factor pairs (Khodak et al. 2021).

Tensors in a group with `fd_pairs` (built by `hf_fnl.optim.fnl_param_groups`) decay by the FD
gradient fd_coef · A(BᵀB) on their factor blocks instead of weight_decay · p; every other tensor is
plain LAMB. The factor tensors keep their trust ratio, also under trust_ratio_on="decayed" whenever
fd_coef ≠ 0: NVIDIA's "trust ratio only where weight decay ≠ 0" rule would silently drop it, since
their decay is FD, not weight decay.
"""

from .lamb import Lamb

__all__ = ["Flambe"]


class Flambe(Lamb):
    accepts_fd = True
