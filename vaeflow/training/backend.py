"""Ray Train's torch process-group set-up, without torch in the process that orchestrates it.

Ray Train's ``TorchConfig`` lives in a module that imports torch, and the Train controller holds it
(it runs the backend's ``on_start``/``on_shutdown``), so every job's controller imports torch: on a
laptop that is a second or more on the way to the first epoch and a few hundred MB for a process
that never computes (BENCHMARKS §14). ``TorchWorkersConfig`` does the same set-up (Ray's own
functions: MASTER_ADDR/PORT from rank 0, the distributed environment variables, the process group,
its shut-down) but only ever names them inside functions that run on the workers, so the controller
imports Ray and nothing of torch. Same options as ``TorchConfig``; gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.util import TrainingFramework


# The functions below run on the workers (pickled by reference to this module); torch is imported
# there, inside them.

def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _set_distributed_env() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _init_process_group(**kwargs: Any) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class _DeviceContext:
    """Around the training function on each worker: Ray's ``TorchConfigContextManager`` (sets the
    default CUDA device to the worker's), imported there."""

    def __enter__(self) -> None:
        from ray.train.torch.config import TorchConfigContextManager

        TorchConfigContextManager().__enter__()

    def __exit__(self, *exc: object) -> bool:
        return False


class _TorchWorkersBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group: Any, backend_config: TorchWorkersConfig) -> None:
        backend = backend_config.backend
        if backend is None:
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        if backend_config.init_method != "env":
            raise ValueError(f"TorchWorkersConfig supports init_method 'env', not {backend_config.init_method!r}")
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_set_distributed_env)  # LOCAL_RANK etc., before the process group
        size = len(worker_group)
        ray.get([worker_group.execute_single_async(rank, _init_process_group, backend=backend, world_rank=rank,
                                                   world_size=size, init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(size)])

    def on_shutdown(self, worker_group: Any, backend_config: TorchWorkersConfig) -> None:
        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        try:
            ray.get(futures, timeout=float(os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                                          DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)))
        except GetTimeoutError:
            pass  # the workers are stopped next either way


@dataclass
class TorchWorkersConfig(BackendConfig):
    """``ray.train.torch.TorchConfig``'s set-up with torch imported on the workers only.

    Attributes:
        backend: the ``torch.distributed`` backend; None picks NCCL when workers have GPUs, else gloo.
        init_method: how the process group finds rank 0; "env" (MASTER_ADDR/MASTER_PORT) only.
        timeout_s: seconds a collective may wait before the process group fails.
    """

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[Backend]:
        return _TorchWorkersBackend

    @property
    def train_func_context(self) -> type[_DeviceContext]:
        return _DeviceContext

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH
