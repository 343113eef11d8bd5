"""Log the total gradient norm before clipping: the number that says whether clipping bites."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import grad_norm
from torch.optim import Optimizer


class GradNormLogger(Callback):
    """Logs ``grad_norm/total`` (the norm of all gradients as one vector) once per
    ``trainer.log_every_n_steps`` optimizer steps.

    Lightning calls ``on_before_optimizer_step`` after backward (and after AMP unscaling) but
    *before* ``configure_gradient_clipping``, so this is the pre-clip norm: compare it with
    ``trainer.gradient_clip_val`` to see how often and how hard clipping acts. The norm is
    computed only on the steps that are logged (one norm per parameter costs a device sync) and
    is not reduced across ranks: DDP gradients are already identical on every rank after
    backward.

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
        # The same test Lightning's LearningRateMonitor uses: true exactly on the steps whose
        # step-level metrics reach the logger, so no norm is computed only to be dropped.
        if not trainer._logger_connector.should_update_logs:
            return
        norms = grad_norm(pl_module, self.norm_type, group_separator="/")
        if not norms:
            return
        total = norms.pop(f"grad_{self.norm_type}_norm_total")
        metrics = {"grad_norm/total": total}
        if self.log_per_parameter:
            prefix = f"grad_{self.norm_type}_norm/"
            metrics.update({f"grad_norm/{k.removeprefix(prefix)}": v for k, v in norms.items()})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False)
