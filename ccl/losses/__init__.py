"""Losses of RD + CCL: KD, SupCon core, local and global CL, the global-term registry, gathers."""

from ccl.losses.gather import gather_no_grad, gather_with_grad
from ccl.losses.global_variants import global_losses, infonce_loss, npairs_loss, triplet_loss
from ccl.losses.kd import kd_loss
from ccl.losses.local import local_contrastive_loss, local_contrastive_views
from ccl.losses.supcon import global_contrastive_loss, supcon_loss

__all__ = [
    "kd_loss",
    "supcon_loss",
    "global_contrastive_loss",
    "local_contrastive_loss",
    "local_contrastive_views",
    "global_losses",
    "triplet_loss",
    "npairs_loss",
    "infonce_loss",
    "gather_with_grad",
    "gather_no_grad",
]
