"""AdamW with decoupled Frobenius decay: the AdamW update, where factor blocks named by a group's
`fd_pairs` decay by fd_coef · A(BᵀB) (resp. B(AᵀA)) from pre-step values instead of weight_decay · p.
Without fd_pairs it is AdamW (decoupled weight decay, bias correction)."""

from .decoupled import DecoupledDecayAdam

__all__ = ["FDAdamW"]


class FDAdamW(DecoupledDecayAdam):
    use_trust_ratio = False
    accepts_fd = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, **kwargs)
