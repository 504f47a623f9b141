"""COCO box AP with detectron2's COCOEvaluator, computed by ``faster_coco_eval`` when available.

This Python-only detectron2 lacks the C++ ``COCOeval_opt`` (``use_fast_impl=True`` raises), so
its COCOEvaluator must run with the official pycocotools COCOeval, which is slow on large sets.
``FastCOCOEvaluator`` keeps detectron2's whole evaluation path (result conversion, per-category
table, ``box_proposals``) and only substitutes the COCOeval class with ``faster_coco_eval``'s
C++ ``COCOeval_faster``, which yields the same numbers (tests/test_train_net.py checks that).
"""
import contextlib
import logging

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as _d2_coco_evaluation

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")


def _faster_cocoeval_class():
    """Return a COCOeval-compatible class backed by faster_coco_eval, or None if not importable."""
    try:
        from faster_coco_eval import COCOeval_faster
    except Exception:  # ImportError, or a broken binary wheel
        return None

    class FasterCOCOeval(COCOeval_faster):
        """``COCOeval_faster`` with pycocotools' call signature and stdout summary."""

        def __init__(self, cocoGt=None, cocoDt=None, iouType="segm"):
            super().__init__(cocoGt, cocoDt, iouType, print_function=print)

    return FasterCOCOeval


def faster_coco_eval_available():
    return _faster_cocoeval_class() is not None


class FastCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` whose AP is computed by faster_coco_eval when importable.

    Args:
        backend: "auto" (faster_coco_eval if importable, else pycocotools), "faster_coco_eval"
            (raise if missing) or "pycocotools" (detectron2's official path).
        Other arguments as ``COCOEvaluator`` (``use_fast_impl`` is decided by ``backend``).
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, kpt_oks_sigmas=(), backend="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        cls = None if backend == "pycocotools" else _faster_cocoeval_class()
        if backend == "faster_coco_eval" and cls is None:
            raise ImportError("backend='faster_coco_eval' needs `pip install faster-coco-eval`")
        self._cocoeval_class = cls
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            # detectron2 switches to its (here missing) C++ COCOeval_opt with use_fast_impl;
            # _eval_predictions substitutes faster_coco_eval's class for it.
            use_fast_impl=cls is not None,
            kpt_oks_sigmas=kpt_oks_sigmas,
        )

    @property
    def backend(self):
        return "faster_coco_eval" if self._cocoeval_class is not None else "pycocotools"

    def _eval_predictions(self, predictions, img_ids=None):
        if self._cocoeval_class is None:
            return super()._eval_predictions(predictions, img_ids=img_ids)
        logger.info("COCO AP computed with faster_coco_eval (same metrics as pycocotools)")
        with _substitute_cocoeval_opt(self._cocoeval_class):
            return super()._eval_predictions(predictions, img_ids=img_ids)


@contextlib.contextmanager
def _substitute_cocoeval_opt(cls):
    # detectron2 0.6 looks COCOeval_opt up in its module when use_fast_impl=True.
    saved = _d2_coco_evaluation.COCOeval_opt
    _d2_coco_evaluation.COCOeval_opt = cls
    try:
        yield
    finally:
        _d2_coco_evaluation.COCOeval_opt = saved


def build_coco_evaluator(dataset_name, output_dir=None, *, distributed=True, backend="auto"):
    """Box-AP evaluator for ``dataset_name`` (tasks=("bbox",): every focal_rpn model is a box
    detector; with outputs holding "proposals", detectron2 also reports AR@100/AR@1000)."""
    return FastCOCOEvaluator(
        dataset_name, tasks=("bbox",), distributed=distributed, output_dir=output_dir,
        backend=backend,
    )
