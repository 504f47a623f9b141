"""Starting train_net's processes: single process, detectron2's launch, torchrun, or CPU spawn.

``launch_main`` adds to detectron2's ``launch``:

* torchrun (``torchrun --nproc_per_node N tools/train_net.py ...``): the process group comes
  from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), with gloo on
  CPU and NCCL on GPU, and detectron2's per-machine process group is built (detectron2 needs
  it for ``comm.get_local_rank``/``get_local_size``): by ``comm.create_local_process_group``
  where detectron2 has it (main), else as v0.6's own launch does (``focal_rpn.d2_adapter``);
* ``--num-gpus N`` (N > 1) without CUDA: N local CPU processes with gloo. detectron2 main's
  ``launch`` does that itself and is used; v0.6's asserts CUDA, so the processes are started
  here, the same way as by torchrun.
"""
import datetime
import logging
import os
import socket
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from .. import d2_adapter

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def torchrun_env(environ=None):
    """{rank, world_size, local_rank, local_world_size} when started by torchrun, else None."""
    environ = os.environ if environ is None else environ
    if not all(k in environ for k in TORCHRUN_ENV):
        return None
    world_size = int(environ["WORLD_SIZE"])
    return {
        "rank": int(environ["RANK"]),
        "world_size": world_size,
        "local_rank": int(environ["LOCAL_RANK"]),
        "local_world_size": int(environ.get("LOCAL_WORLD_SIZE", world_size)),
    }


def default_backend():
    return "nccl" if torch.cuda.is_available() else "gloo"


def create_local_process_group(world_size, local_world_size, rank):
    """Make detectron2's process group of this machine's ranks (``comm.get_local_rank``).

    Ranks are laid out machine by machine (as torchrun and detectron2 do). Every rank must call
    this: ``dist.new_group`` is collective over all ranks, for every group.
    """
    if world_size % local_world_size != 0:
        raise ValueError(f"WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE "
                         f"{local_world_size}: machines with different process counts")
    if d2_adapter.HAS_CREATE_LOCAL_PROCESS_GROUP:
        comm.create_local_process_group(local_world_size)
        return
    for machine in range(world_size // local_world_size):
        ranks = list(range(machine * local_world_size, (machine + 1) * local_world_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            d2_adapter.set_local_process_group(group)


def init_distributed_from_env(backend=None, timeout=DEFAULT_TIMEOUT):
    """Initialise torch.distributed and detectron2's comm from torchrun's environment."""
    env = torchrun_env()
    if env is None:
        raise RuntimeError(f"not started by torchrun: need the environment variables {TORCHRUN_ENV}")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(env["local_rank"])
    dist.init_process_group(backend=backend, init_method="env://", rank=env["rank"],
                            world_size=env["world_size"], timeout=timeout)
    create_local_process_group(env["world_size"], env["local_world_size"], env["rank"])
    # as detectron2's launch: avoid a later timeout right after init_process_group
    comm.synchronize()
    logger.info("torch.distributed initialised: rank %d/%d, local rank %d, backend %s",
                env["rank"], env["world_size"], env["local_rank"], backend)
    return env


def _run_distributed(main_func, args):
    initialised_here = not dist.is_initialized()
    if initialised_here:
        init_distributed_from_env()
    try:
        return main_func(args)
    finally:
        if initialised_here and dist.is_initialized():
            dist.destroy_process_group()
            d2_adapter.forget_local_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank, main_func, world_size, master_addr, master_port, args):
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
    )
    _run_distributed(main_func, args)


def launch_cpu(main_func, num_processes, args, dist_url=None):
    """Run ``main_func(args)`` in ``num_processes`` local CPU processes joined by gloo."""
    addr, port = "127.0.0.1", None
    if dist_url and dist_url != "auto":
        url = urlparse(dist_url)
        if url.scheme == "tcp" and url.port:
            addr, port = url.hostname, url.port
    port = port or _free_port()
    mp.start_processes(_cpu_worker, nprocs=num_processes, start_method="spawn",
                       args=(main_func, num_processes, addr, port, args))


def launch_main(main_func, args):
    """Call ``main_func(args)`` in the process layout the command line asks for.

    ``args`` holds detectron2's launch options (num_gpus, num_machines, machine_rank, dist_url).
    """
    if torchrun_env() is not None:
        return _run_distributed(main_func, args)
    num_gpus = getattr(args, "num_gpus", 1)
    num_machines = getattr(args, "num_machines", 1)
    if num_gpus * num_machines <= 1:
        return main_func(args)
    if torch.cuda.is_available() or d2_adapter.LAUNCH_SUPPORTS_CPU:
        if not torch.cuda.is_available():
            logger.warning("CUDA is unavailable: --num-gpus %d runs %d CPU processes (gloo) "
                           "with detectron2's launch", num_gpus, num_gpus)
        return d2_launch(main_func, num_gpus, num_machines=num_machines,
                         machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    if num_machines > 1:
        raise SystemExit(
            "Multi-machine training without CUDA: start it with torchrun on every machine, e.g. "
            "torchrun --nnodes 2 --node_rank R --nproc_per_node N --master_addr HOST "
            "--master_port PORT tools/train_net.py ... (gloo backend on CPU)")
    logger.warning("CUDA is unavailable: --num-gpus %d runs %d CPU processes (gloo)",
                   num_gpus, num_gpus)
    return launch_cpu(main_func, num_gpus, args, dist_url=getattr(args, "dist_url", None))
