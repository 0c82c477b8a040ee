"""Small helpers shared by every module: atomic file writes, command-line booleans."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the permissions a plain ``open`` would (mkstemp makes it 0600), then rename."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file next to ``path`` and rename it onto ``path`` only on success.

    A crash (or an exception in the ``with`` body) never leaves a truncated ``path`` behind.
    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like :func:`atomic_write` but yields a temporary *path* for writers that take a filename
    (``torch.save``, ``PIL.Image.save``, ``pydicom.dcmwrite``); renamed onto ``path`` on success."""

    @contextlib.contextmanager
    def _cm() -> Iterator[Path]:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix or ".tmp", dir=target.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            _publish(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    return _cm()


def as_flag(value: Any, name: str = "flag") -> bool:
    """A boolean from a bool, 0/1 or a command-line string (``"true"``/``"false"``, ``"yes"``/``"no"``, ``"1"``/``"0"``,
    any case): ``--enforce_clicks false`` must not turn into ``bool("false") == True``."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    return bool(value)


def set_cudnn_benchmark(value: Any) -> bool:
    """Apply a bundle's ``cudnn_benchmark`` switch (after ``monai.utils.set_determinism``, which turns it off):
    on, cudnn picks the fastest algorithms (``torch.backends.cudnn.benchmark``) and leaves deterministic mode
    (``torch.backends.cudnn.deterministic``), since the fastest algorithm is not always a deterministic one.
    Returns the flag."""
    import torch

    flag = as_flag(value, "cudnn_benchmark")
    torch.backends.cudnn.benchmark = flag
    torch.backends.cudnn.deterministic = not flag
    return flag


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers(cuda: bool | None = None, cores: int | None = None, cap: int = 12) -> int:
    """DataLoader workers for this machine: with a CUDA GPU the usable cores less two (the main process and its
    CUDA threads), at least 2 and at most ``cap`` (12 of 16 cores fed an H100 at 270 SCN images/s, 2026-11-23); on
    the CPU at most 2, because the training process's own convolutions use every core (the 2-core figures in the
    docs ran with 2). ``cuda`` / ``cores``: default the machine's."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    n = usable_cores() if cores is None else int(cores)
    return max(2, min(int(cap), n - 2)) if cuda else max(0, min(2, n))


# --- the runtime of a bundle workflow: device, distributed launch, engine switches -----------------------------------


def distributed_launch() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting ``WORLD_SIZE`` > 1): every bundle
    workflow then runs distributed (one process per GPU, or per CPU process with gloo), with no config change."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_device() -> Any:
    """The device of this process: ``cuda:LOCAL_RANK`` under a distributed launch with CUDA, else ``cuda:0`` with
    CUDA, else the CPU (every rank of a CPU launch uses the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) if distributed_launch() else 0}")


def rank() -> int:
    """This process's rank in an initialised process group, else 0."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def initialize_workflow(seed: int, cudnn_benchmark: Any = False, device: Any = None) -> None:
    """The ``initialize`` step of every bundle workflow: under a distributed launch join the process group (NCCL with
    CUDA, gloo without) on this rank's CUDA ``device``; seed every generator (``monai.utils.set_determinism``); then
    apply ``cudnn_benchmark`` (:func:`set_cudnn_benchmark`, after the determinism that turns it off)."""
    import torch
    import torch.distributed as dist
    from monai.utils import set_determinism

    if distributed_launch() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.set_device(device)
    set_determinism(seed=int(seed))
    set_cudnn_benchmark(cudnn_benchmark)


def finalize_workflow() -> None:
    """The ``finalize`` step: leave the process group of a distributed run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def place_network(network: Any, device: Any, channels_last: Any = False, data_parallel: bool = True) -> Any:
    """``network`` on ``device`` (channels-last weights with ``channels_last``), in ``DistributedDataParallel`` under a
    distributed launch unless ``data_parallel`` is False (checkpoints are written without the wrapper:
    :mod:`monai_ext.handlers.checkpoint`); ``None`` (a component switched off) stays ``None``."""
    import torch

    if network is None:
        return None
    memory_format = torch.channels_last if as_flag(channels_last, "channels_last") else torch.preserve_format
    network = network.to(device, memory_format=memory_format)
    if data_parallel and distributed_launch():
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device] if torch.device(device).type == "cuda" else None
        )
    return network


def use_amp(amp: Any, device: Any) -> bool:
    """MONAI's automatic mixed precision applies on CUDA only: the ``amp`` switch there, off on the CPU."""
    import torch

    return as_flag(amp, "amp") and torch.device(device).type == "cuda"


def compile_flag(compile: Any) -> bool:
    """The ``compile`` switch: a boolean (also as a command-line string), or the ``torch.compile`` options as a dict
    (e.g. ``{"mode": "max-autotune"}``; ``{}`` compiles with the defaults), which switches it on."""
    return True if isinstance(compile, dict) else as_flag(compile, "compile")


def compile_options(compile: Any) -> dict[str, Any]:
    """The ``torch.compile`` options of the ``compile`` switch (:func:`compile_flag`): its dict, else none."""
    return dict(compile) if isinstance(compile, dict) else {}


def amp_kwargs() -> dict[str, Any]:
    """MONAI engines' ``amp_kwargs``: bfloat16 where the GPU supports it (no grad scaling needed), else float16."""
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {"dtype": torch.bfloat16 if bf16 else torch.float16}


def distributed_sampler(dataset: Any, shuffle: bool) -> Any:
    """Under a distributed launch a ``monai.data.DistributedSampler`` over ``dataset`` (training, ``shuffle``: shuffled,
    the same number of items on every rank; evaluation: in order, no padding), else ``None``."""
    if not distributed_launch():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, shuffle=shuffle, even_divisible=shuffle)
