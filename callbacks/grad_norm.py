"""Log the total gradient norm before clipping: the number that says whether clipping bites."""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer


class GradNormLogger(Callback):
    """Logs ``grad_norm/total``, the norm of all gradients as one vector, before clipping
    (``on_before_optimizer_step`` runs after AMP unscaling, before ``gradient_clip_val`` acts).
    Lightning's ``utilities.grad_norm`` copies a norm per parameter to the CPU; this is one
    fused norm, not reduced: DDP gradients are alike on every rank.

    Args:
        norm_type: the p of the p-norm (``2`` as norm clipping, ``inf``: the largest entry).
        log_per_parameter: also log each parameter's norm as ``grad_norm/<name>``.
    """

    def __init__(self, norm_type: float | str = 2.0, log_per_parameter: bool = False) -> None:
        self.norm_type = float(norm_type)
        self.log_per_parameter = log_per_parameter

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: Optimizer) -> None:
        # Only on the steps Lightning writes (every log_every_n_steps, and the last): a norm
        # no one would see is not computed.
        every, step = trainer.log_every_n_steps, trainer.global_step
        if every == 0 or ((step + 1) % every and not trainer.should_stop):
            return
        named = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        metrics = {"grad_norm/total":
                   torch.nn.utils.get_total_norm([g for _, g in named], self.norm_type)}
        if self.log_per_parameter:
            metrics.update({f"grad_norm/{name}": g.norm(self.norm_type) for name, g in named})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
