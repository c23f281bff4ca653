"""Who is who in a multi-worker run, from TF_CONFIG. No TensorFlow here: a missing or broken
TF_CONFIG is reported before the images are decoded and TensorFlow is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass

from leukedge.train.config import SettingsError

TF_CONFIG_HELP = (
    'set TF_CONFIG on every host, e.g. TF_CONFIG=\'{"cluster": {"worker": '
    '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
    "(index 0 on the first host, 1 on the second, ...)"
)


def _is_address(address: object) -> bool:
    """'host:port' with a port TensorFlow can listen on (1-65535)."""
    if not isinstance(address, str) or ":" not in address:
        return False
    host, port = address.rsplit(":", 1)
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


class ClusterError(SettingsError):
    """TF_CONFIG is missing or does not describe this worker's place in a cluster."""


class WorkerLostError(RuntimeError):
    """Another worker stopped (crashed, killed, unreachable) during distributed training."""


@dataclass(frozen=True)
class Role:
    """This process's place in the run: how many workers, which one, whether it writes."""

    strategy: str
    workers: int = 1
    task_type: str = "worker"
    index: int = 0
    replicas: int = 1
    has_chief_task: bool = False  # the cluster names a separate "chief" task

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.index == 0 and not self.has_chief_task
        )

    def describe(self) -> str:
        who = (
            "the chief (writes the run folder)"
            if self.is_chief
            else f"{self.task_type} {self.index}"
        )
        return f"{self.strategy}: {self.workers} worker(s), {self.replicas} replica(s); this process is {who}"


def parse_tf_config(value: str | None) -> Role:
    """The cluster TF_CONFIG describes, checked so that a typo fails in one line, not in gRPC."""
    if value is None or not value.strip():
        raise ClusterError(
            f"--strategy multiworker needs the TF_CONFIG environment variable: {TF_CONFIG_HELP}"
        )
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as error:
        raise ClusterError(
            f"TF_CONFIG is not valid JSON ({error.msg} at character {error.pos}): {TF_CONFIG_HELP}"
        ) from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterError(f"TF_CONFIG needs a 'cluster' and a 'task' object: {TF_CONFIG_HELP}")
    bad = [
        k
        for k, v in cluster.items()
        if k not in ("chief", "worker")
        or not isinstance(v, list)
        or not all(_is_address(a) for a in v)
    ]
    if bad or not cluster:
        raise ClusterError(
            f"TF_CONFIG cluster must map 'worker' (and optionally 'chief') to lists of "
            f"'host:port' addresses, found {cluster!r}: {TF_CONFIG_HELP}"
        )
    task_type, index = task.get("type"), task.get("index")
    if (
        task_type not in cluster
        or not isinstance(index, int)
        or not 0 <= index < len(cluster[task_type])
    ):
        raise ClusterError(
            f"TF_CONFIG task {task!r} is not one of the cluster's tasks "
            f"({', '.join(f'{k} 0..{len(v) - 1}' for k, v in cluster.items())}): {TF_CONFIG_HELP}"
        )
    workers = sum(len(v) for v in cluster.values())
    return Role(
        "multiworker", workers, task_type, index, workers, has_chief_task="chief" in cluster
    )
