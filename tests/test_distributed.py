"""Two-process CPU training (gloo) of tools/train_net.py, started by torchrun and by
``--num-gpus 2`` (local CPU processes): it completes, and both ranks end with identical weights
although each trained on different images (DistributedDataParallel averaged the gradients).

Each rank saves its own final model into OUTPUT_DIR/rank<R>.pth through a test hook added by a
small launcher script (the script imports focal_rpn.engine, appends the hook to
``Trainer.build_hooks`` and calls tools/train_net.py's ``cli``; it stays ``__main__``, so the
processes that ``--num-gpus`` spawns re-import it and get the hook too)."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from focal_rpn.data.synthetic import make_tiny_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
ITERS = 3

LAUNCHER = textwrap.dedent(f"""\
    import os, sys

    import torch
    from detectron2.engine import HookBase
    from detectron2.utils import comm

    from focal_rpn.engine import Trainer


    def _state(model):
        inner = getattr(model, "module", model)
        return {{k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}}


    class SaveRankModel(HookBase):
        # every rank: its model's parameters and buffers before and after training
        def before_train(self):
            self.init_state = _state(self.trainer.model)

        def after_train(self):
            model = self.trainer.model
            inner = getattr(model, "module", model)
            torch.save({{
                "rank": comm.get_rank(),
                "world_size": comm.get_world_size(),
                "local_rank": comm.get_local_rank(),
                "backend": torch.distributed.get_backend(),
                "wrapper": type(model).__name__,
                "iter": self.trainer.iter,
                "init_state": self.init_state,
                "state": _state(model),
                "params": sorted(n for n, _ in inner.named_parameters()),
            }}, os.path.join(self.trainer.cfg.OUTPUT_DIR, f"rank{{comm.get_rank()}}.pth"))


    _build_hooks = Trainer.build_hooks
    Trainer.build_hooks = lambda self: _build_hooks(self) + [SaveRankModel()]

    if __name__ == "__main__":  # (spawned --num-gpus workers re-import this file, not this part)
        sys.path.insert(0, {os.path.dirname(TRAIN_NET)!r})
        from train_net import cli  # tools/train_net.py's entry point, on sys.argv[1:]

        cli()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_data")
    # 8 different images: with 2 per batch each rank trains on its own 2 per iteration
    json_file, image_root = make_tiny_coco(root, num_images=8, image_size=64)
    launcher = root / "launch_with_rank_hook.py"
    launcher.write_text(LAUNCHER)
    return json_file, image_root, str(launcher)


def _tiny_args(config, json_file, image_root, output_dir):
    return [
        "--config-file", os.path.join(CONFIGS, config),
        "--dataset", f"dist_tiny={json_file}:{image_root}",
        "MODEL.DEVICE", "cpu",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "4",  # total: 2 images per rank
        "SOLVER.MAX_ITER", str(ITERS), "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.02",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TRAIN", '("dist_tiny",)', "DATASETS.TEST", '("dist_tiny",)',
        "OUTPUT_DIR", str(output_dir),
    ]


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=480)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, log
    return log


def _check_two_ranks_agree(output_dir):
    ranks = [torch.load(output_dir / f"rank{r}.pth", weights_only=False) for r in (0, 1)]
    for r, saved in enumerate(ranks):
        assert saved["rank"] == r and saved["world_size"] == 2 and saved["local_rank"] == r
        assert saved["backend"] == "gloo"
        assert saved["wrapper"] == "DistributedDataParallel"
        assert saved["iter"] == ITERS
    params = ranks[0]["params"]
    assert params == ranks[1]["params"] and len(params) > 10
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    # identical weights on both ranks ...
    for name in params:
        assert torch.equal(state0[name], state1[name]), f"{name} differs between the ranks"
    # ... although the ranks trained on different images: BatchNorm running statistics
    # (buffers, not synchronised: broadcast_buffers=False) saw each rank's own batches
    running = [k for k in state0 if k.endswith("running_mean")]
    assert running and any(not torch.equal(state0[k], state1[k]) for k in running)
    # both ranks started from the same weights (DDP broadcasts rank 0's) and training
    # changed most of them
    init0, init1 = ranks[0]["init_state"], ranks[1]["init_state"]
    assert all(torch.equal(init0[n], init1[n]) for n in params)
    changed = [n for n in params if not torch.equal(init0[n], state0[n])]
    assert len(changed) > 0.8 * len(params), f"only {len(changed)}/{len(params)} trained"
    # rank 0's final checkpoint holds these weights
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == ITERS - 1
    for name in params:
        assert torch.equal(final["model"][name], state0[name]), name
    return state0


def test_torchrun_two_cpu_processes_train_to_identical_weights(tiny_coco, tmp_path):
    json_file, image_root, launcher = tiny_coco
    out = tmp_path / "out"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), launcher]
               + _tiny_args("quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml", json_file, image_root,
                            out), tmp_path)
    state = _check_two_ranks_agree(out)
    # the distributed evaluation (results gathered from both ranks) reached the main process
    with open(out / "eval_results.json") as f:
        results = json.load(f)
    assert {"bbox/AP", "box_proposals/AR@100", "box_proposals/AR@1000"} <= set(results)
    assert 0 <= results["box_proposals/AR@1000"] <= 100
    assert any(k.startswith("proposal_generator.") for k in state)


def test_num_gpus_2_without_cuda_spawns_two_cpu_processes(tiny_coco, tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("with 2 GPUs --num-gpus 2 uses detectron2's NCCL launcher, not CPU processes")
    json_file, image_root, launcher = tiny_coco
    out = tmp_path / "out"
    log = _run([sys.executable, launcher, "--num-gpus", "2"]
               + _tiny_args("quick_retinanet_R18.yaml", json_file, image_root, out), tmp_path)
    assert "runs 2 CPU processes (gloo)" in log
    _check_two_ranks_agree(out)
