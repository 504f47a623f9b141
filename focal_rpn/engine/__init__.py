"""Training engine of focal_rpn: the Trainer, train_net's steps, and process launching."""
from .launch import launch_main, torchrun_env
from .trainer import Trainer, build_argument_parser, build_config, main, prepare_datasets, setup

__all__ = [
    "Trainer",
    "build_argument_parser",
    "build_config",
    "launch_main",
    "main",
    "prepare_datasets",
    "setup",
    "torchrun_env",
]
