"""Evaluation for focal_rpn: COCO box AP (optionally with faster_coco_eval) and proposal recall."""
from .coco import FastCOCOEvaluator, build_coco_evaluator, faster_coco_eval_available
from .proposal_recall import ProposalRecallEvaluator
from .proposals import evaluate_proposals, has_proposal_generator, proposal_network

__all__ = [
    "FastCOCOEvaluator",
    "ProposalRecallEvaluator",
    "build_coco_evaluator",
    "faster_coco_eval_available",
    "evaluate_proposals",
    "has_proposal_generator",
    "proposal_network",
]
