"""SLURM submission through submitit: one task per node, each running Detectron2's ``launch``
with the node's GPUs; machine rank, node count and the rendezvous address come from SLURM's
variables (through ``submitit.JobEnvironment``). A preempted or timed-out job is requeued with
``--resume``, so it continues from its last checkpoint.
"""

import argparse
import logging
import zlib
from typing import List, Optional

import submitit

from .cli import launch_main, parse_args

__all__ = ["TrainJob", "make_executor", "submit"]

logger = logging.getLogger(__name__)


class TrainJob:
    """A picklable job: ``tools/train_net.py`` with ``train_argv`` on every node of the job.

    Args:
        train_argv: train_net's arguments (``--config-file ... KEY VALUE``); the distributed
            flags (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``) are
            set from the job.
        gpus_per_node: processes per node (one per GPU; without CUDA, CPU processes on gloo).
    """

    def __init__(self, train_argv: List[str], gpus_per_node: int):
        self.train_argv = list(train_argv)
        self.gpus_per_node = gpus_per_node

    def distributed_args(self, env) -> argparse.Namespace:
        """train_net's arguments for this node of the job described by ``env``
        (a ``submitit.JobEnvironment``)."""
        args = parse_args(self.train_argv)
        args.num_gpus = self.gpus_per_node
        args.num_machines = env.num_nodes
        args.machine_rank = env.node
        # Rank 0's node is the rendezvous; the port is derived from the job id, so that two
        # jobs sharing a node do not collide (a requeued job keeps its id, so its port).
        port = 20000 + zlib.crc32(str(env.job_id).split("_")[0].encode()) % 20000
        args.dist_url = f"tcp://{env.hostnames[0]}:{port}"
        return args

    def __call__(self):
        env = submitit.JobEnvironment()
        args = self.distributed_args(env)
        logger.info(
            "SLURM job %s: node %d of %d, %d processes per node, rendezvous %s",
            env.job_id,
            env.node,
            env.num_nodes,
            args.num_gpus,
            args.dist_url,
        )
        launch_main(args)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or timeout: requeue the same job with ``--resume``."""
        argv = self.train_argv if "--resume" in self.train_argv else ["--resume", *self.train_argv]
        return submitit.helpers.DelayedSubmission(TrainJob(argv, self.gpus_per_node))


def make_executor(
    folder: str,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    cpus_per_task: int = 10,
    mem_gb: int = 0,
    timeout_min: int = 4320,
    partition: str = "",
    name: str = "rpanoptic",
    cluster: Optional[str] = None,
    slurm_args: Optional[dict] = None,
) -> submitit.AutoExecutor:
    """A submitit executor for ``nodes`` x ``gpus_per_node``, one task per node.

    Args:
        folder: where submitit keeps the job's pickles and logs (``%j`` is the job id).
        cluster: None picks SLURM when ``sbatch`` is there; "local" or "debug" run here.
        slurm_args: further ``#SBATCH`` options without the prefix (e.g. {"account": "x"}).
    """
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = dict(
        name=name,
        nodes=nodes,
        tasks_per_node=1,  # one launcher per node; Detectron2's launch starts the GPU processes
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task,
        timeout_min=timeout_min,
    )
    if mem_gb:
        params["mem_gb"] = mem_gb
    if partition:
        params["slurm_partition"] = partition
    for key, value in (slurm_args or {}).items():
        params[f"slurm_{key}"] = value
    executor.update_parameters(**params)
    return executor


def submit(executor: submitit.AutoExecutor, train_argv: List[str], gpus_per_node: int):
    """Check ``train_argv`` (train_net's flags), then submit the job; returns the submitit job."""
    parse_args(train_argv)  # a bad flag fails here, not on the cluster
    return executor.submit(TrainJob(train_argv, gpus_per_node))
