"""Log the total gradient norm before clipping: the number that says whether clipping bites."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from callbacks.direct_logging import log_to_loggers, logs_this_step


class GradNormLogger(Callback):
    """Logs ``grad_norm/total`` (the norm of all gradients as one vector) once per
    ``trainer.log_every_n_steps`` optimizer steps.

    Lightning calls ``on_before_optimizer_step`` after backward (and after AMP unscaling) but
    *before* ``configure_gradient_clipping``, so this is the pre-clip norm: compare it with
    ``trainer.gradient_clip_val`` to see how often and how hard clipping acts. The norm is
    computed only on the steps that are logged, as one fused norm with a single device sync, and
    is not reduced across ranks: DDP gradients are already identical on every rank after
    backward. It goes straight to the loggers (see ``callbacks.direct_logging``), so it is not
    in ``trainer.callback_metrics``.

    Args:
        norm_type: the p of the p-norm; ``2`` matches ``gradient_clip_algorithm: norm``,
            ``inf`` gives the largest gradient entry, which ``value`` clipping bounds.
        log_per_parameter: also log every parameter's norm under ``grad_norm/<name>``.
    """

    def __init__(self, norm_type: float | str = 2.0, log_per_parameter: bool = False) -> None:
        self.norm_type = float(norm_type)
        self.log_per_parameter = log_per_parameter

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        # Before the optimizer step, global_step is the step being taken (the helper's default).
        # Only the steps whose step-level metrics Lightning writes: no norm computed to be dropped.
        if not logs_this_step(trainer):
            return
        named = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        # One fused norm over all gradients and one device sync, where Lightning's grad_norm
        # converts each parameter's norm to a Python float (a sync each on a GPU).
        total = torch.nn.utils.get_total_norm([g for _, g in named], self.norm_type)
        metrics = {"grad_norm/total": total.item()}
        if self.log_per_parameter:
            norms = torch.stack([g.norm(self.norm_type) for _, g in named]).tolist()
            metrics.update({f"grad_norm/{name}": n for (name, _), n in zip(named, norms,
                                                                            strict=True)})
        log_to_loggers(trainer, metrics)
