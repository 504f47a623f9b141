"""COCO box AP with detectron2's COCOEvaluator, computed by ``faster_coco_eval`` when available.

A detectron2 built without C++ lacks ``COCOeval_opt`` (v0.6: ``use_fast_impl=True`` raises;
main: falls back to pycocotools), so its COCOEvaluator runs the official pycocotools COCOeval,
which is slow on large sets. ``FastCOCOEvaluator`` keeps detectron2's whole evaluation path
(result conversion, per-category table, ``box_proposals``) and only substitutes the COCOeval
class with ``faster_coco_eval``'s C++ ``COCOeval_faster``, which yields the same numbers
(tests/test_train_net.py checks that). The log names the class that actually computed the AP.
"""
import logging

from ..d2_adapter import COCOEvaluatorWithCOCOevalClass

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
#: the COCOeval class used by each backend, as ``FastCOCOEvaluator.cocoeval_used`` names it
COCOEVAL_CLASS_NAMES = {"faster_coco_eval": "FasterCOCOeval", "pycocotools": "COCOeval"}


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


class FastCOCOEvaluator(COCOEvaluatorWithCOCOevalClass):
    """detectron2's ``COCOEvaluator`` whose AP is computed by faster_coco_eval when importable.

    Args:
        backend: "auto" (faster_coco_eval if importable, else pycocotools), "faster_coco_eval"
            (raise if missing) or "pycocotools" (detectron2's official path).
        Other arguments as ``COCOEvaluator`` (``use_fast_impl`` is decided by ``backend``).

    After ``evaluate()``, ``cocoeval_used`` names the COCOeval class that computed the AP
    ("FasterCOCOeval" or "COCOeval"; None without detections).
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, kpt_oks_sigmas=(), backend="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        cls = None if backend == "pycocotools" else _faster_cocoeval_class()
        if backend == "faster_coco_eval" and cls is None:
            raise ImportError("backend='faster_coco_eval' needs `pip install faster-coco-eval`")
        self.cocoeval_class = cls
        self.cocoeval_used = None
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,  # the COCOeval class is this evaluator's (d2_adapter)
            kpt_oks_sigmas=kpt_oks_sigmas,
        )

    @property
    def backend(self):
        return "faster_coco_eval" if self.cocoeval_class is not None else "pycocotools"

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        if self.cocoeval_used is not None:
            logger.info("COCO AP computed by %s (%s)", self.cocoeval_used,
                        "faster_coco_eval, same metrics as pycocotools"
                        if self.cocoeval_used == COCOEVAL_CLASS_NAMES["faster_coco_eval"]
                        else "pycocotools, the official implementation")
        return results


def build_coco_evaluator(dataset_name, output_dir=None, *, distributed=True, backend="auto"):
    """Box-AP evaluator for ``dataset_name`` (tasks=("bbox",): every focal_rpn model is a box
    detector; with outputs holding "proposals", detectron2 also reports AR@100/AR@1000)."""
    return FastCOCOEvaluator(
        dataset_name, tasks=("bbox",), distributed=distributed, output_dir=output_dir,
        backend=backend,
    )
