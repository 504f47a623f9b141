"""Focal losses (Lin et al., "Focal Loss for Dense Object Detection", 2017): pure functions of
tensors (no detectron2 state).

The public API, defined in :mod:`.api`:

* :func:`sigmoid_focal_loss`: logits and targets of any one shape (e.g. (R, K)); the drop-in
  equivalent of fvcore's ``sigmoid_focal_loss`` (same signature and values), numerically
  stable and usable with float16 / bfloat16 inputs; 0/1 targets are routed to the label
  kernel, soft targets to a fused closed-form kernel of their own.
* :func:`sigmoid_focal_loss_with_labels`: logits (R, K) and int64 labels (R,) instead of
  one-hot targets, the fast path used by the models: a custom autograd Function whose gradient
  is computed in closed form during the forward pass, in cache-sized row chunks.
* :func:`softmax_focal_loss`: logits (R, C) over C classes and int64 labels (R,); a true
  softmax focal loss, also a custom autograd Function with a closed-form gradient.

Where the rest is:

* :mod:`.sigmoid`: the sigmoid kernels and autograd Functions (and the notation and
  closed-form gradients they implement), the chunk sizes ``CPU_CHUNK_ELEMENTS`` /
  ``CUDA_CHUNK_ELEMENTS`` and ``SPARSE_TARGET_FRACTION``;
* :mod:`.softmax`: the softmax kernel and autograd Function;
* :mod:`.common`: the argument checks and the compute dtype both use.
"""
from .api import sigmoid_focal_loss, sigmoid_focal_loss_with_labels, softmax_focal_loss

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_with_labels", "softmax_focal_loss"]
