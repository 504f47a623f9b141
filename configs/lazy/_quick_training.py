# Data, optimizer, LR schedule and training length of a quick CPU recipe (a yaml config of this
# repo), for the quick_*.py configs here: every value is read from the yaml, so the lazy and yaml
# recipes cannot drift apart. Not a config to train by itself: it has no model.
import torch

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.solver import get_default_optimizer_params

from focal_rpn.evaluation import FastCOCOEvaluator
from focal_rpn.lazy import clipped_optimizer, dataset_names, multistep_lr_multiplier


def quick_training(y):
    """(dataloader, optimizer, lr_multiplier, train) of the yacs config ``y``."""
    S = y.SOLVER
    dataloader = model_zoo.get_config("common/data/coco.py").dataloader
    dataloader.train.dataset.names = L(dataset_names)(specs=list(y.DATASETS.TRAIN))
    dataloader.train.mapper.update(use_instance_mask=False, image_format=y.INPUT.FORMAT)
    dataloader.train.mapper.augmentations = [
        L(T.ResizeShortestEdge)(
            short_edge_length=list(y.INPUT.MIN_SIZE_TRAIN),
            max_size=y.INPUT.MAX_SIZE_TRAIN,
            sample_style=y.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        ),
        L(T.RandomFlip)(horizontal=True),
    ]
    dataloader.train.total_batch_size = S.IMS_PER_BATCH
    dataloader.train.num_workers = y.DATALOADER.NUM_WORKERS
    dataloader.test.dataset.names = L(dataset_names)(specs=y.DATASETS.TEST[0])
    dataloader.test.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=y.INPUT.MIN_SIZE_TEST, max_size=y.INPUT.MAX_SIZE_TEST)
    ]
    dataloader.test.num_workers = y.DATALOADER.NUM_WORKERS
    dataloader.evaluator = L(FastCOCOEvaluator)(dataset_name="${..test.dataset.names}")

    clip = S.CLIP_GRADIENTS
    optimizer = L(clipped_optimizer)(
        optimizer="torch.optim.AdamW" if S.OPTIMIZER == "AdamW" else "torch.optim.SGD",
        params=L(get_default_optimizer_params)(
            base_lr=S.BASE_LR,
            weight_decay_norm=S.WEIGHT_DECAY_NORM,
            bias_lr_factor=S.BIAS_LR_FACTOR,
            weight_decay_bias=S.WEIGHT_DECAY_BIAS,
        ),
        lr=S.BASE_LR,
        weight_decay=S.WEIGHT_DECAY,
        clip_type=clip.CLIP_TYPE if clip.ENABLED else None,
        clip_value=clip.CLIP_VALUE,
        norm_type=clip.NORM_TYPE,
    )
    if S.OPTIMIZER == "AdamW":
        optimizer.betas = list(S.BETAS)
    else:
        optimizer.update(momentum=S.MOMENTUM, nesterov=S.NESTEROV)

    lr_multiplier = L(multistep_lr_multiplier)(
        max_iter=S.MAX_ITER, steps=list(S.STEPS), gamma=S.GAMMA, warmup_iters=S.WARMUP_ITERS,
        warmup_factor=S.WARMUP_FACTOR, warmup_method=S.WARMUP_METHOD,
    )

    train = model_zoo.get_config("common/train.py").train
    train.update(
        init_checkpoint=y.MODEL.WEIGHTS,
        max_iter=S.MAX_ITER,
        eval_period=y.TEST.EVAL_PERIOD if y.TEST.EVAL_PERIOD > 0 else S.MAX_ITER,
        output_dir=y.OUTPUT_DIR.replace("./output/", "./output/lazy/"),
        seed=y.SEED,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    train.checkpointer.period = S.CHECKPOINT_PERIOD
    return dataloader, optimizer, lr_multiplier, train
