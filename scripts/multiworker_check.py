"""Two edge-train workers on 127.0.0.1 against one, on a tiny real model (run by scripts/multiworker-check).

Checks, each printed with PASS/FAIL; the exit status is 0 only when all pass:
1. `--strategy multiworker` without TF_CONFIG, and with a TF_CONFIG that is not JSON: a one-line
   error that names TF_CONFIG, exit 1, no traceback, no run folder.
2. A single-worker run (TF_CONFIG with one worker) and a two-worker run (two processes) with the
   same global batch finish; both workers ran the same number of training steps, as many as the
   single worker.
3. The chief alone wrote: its --out holds a complete run; worker 1's --out (another folder) does
   not exist, and no staging folder is left.
4. The two-worker metrics equal the single worker's: every epoch's loss and validation loss
   within TOLERANCE, the same validation and test confusion matrices. Dropout is 0, so that no
   random draw depends on how a batch is split between workers (see train/distributed.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# Float sums in another order (two partial gradient sums instead of one) move the loss in the
# 7th decimal over a few dozen steps (1.8e-7 measured); anything beyond 1e-4 is a real difference.
TOLERANCE = 1e-4
# TINY, free_ports and tf_config are also imported by tests/test_train_distributed.py, so that
# the script and the tests train the same tiny model on the same kind of local cluster.
TINY = (
    "--alpha",
    "0.35",
    "--image-size",
    "96",
    "--limit-per-class",
    "12",
    "--epochs",
    "2",
    "--fine-tune-epochs",
    "1",
    "--int8-refit-epochs",
    "1",
    "--batch-size",
    "8",
    "--dropout",
    "0",
    "--seed",
    "3",
)
STEPS_LINE = re.compile(r"training steps run by this worker: (\d+)")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def edge_train(out: Path, extra_env: dict, data: Path, weights: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra_env}
    command = [
        str(Path(sys.executable).parent / "edge-train"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--strategy",
        "multiworker",
        *TINY,
        *weights,
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def history(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "history.csv").read_text().splitlines()))


class Checks:
    def __init__(self):
        self.failed = 0

    def __call__(self, ok: bool, what: str, detail: str = "") -> bool:
        print(
            f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  ({detail})" if detail else ""), flush=True
        )
        self.failed += not ok
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("LEUKEDGE_DATA", SHARED / "data" / "all-leukemia")),
    )
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per training")
    args = parser.parse_args()
    weights_file = (
        SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    )
    weights = ["--weights", str(weights_file)] if weights_file.is_file() else []
    work = args.keep or Path(tempfile.mkdtemp(prefix="multiworker-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Checks()
    started = time.monotonic()

    # 1. Bad TF_CONFIG: refused in one line before any training.
    for label, value in (
        ("without TF_CONFIG", None),
        ("with TF_CONFIG that is not JSON", "{cluster: worker"),
    ):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        if value is not None:
            env["TF_CONFIG"] = value
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "edge-train"),
                "--data",
                str(args.data),
                "--out",
                str(work / "refused"),
                "--strategy",
                "multiworker",
                *TINY,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = result.stderr.strip().splitlines()
        check(
            result.returncode == 1
            and len(lines) == 1
            and "TF_CONFIG" in lines[0]
            and "Traceback" not in result.stderr + result.stdout
            and not (work / "refused").exists(),
            f"--strategy multiworker {label}: one-line error naming TF_CONFIG",
            lines[-1] if lines else "no output",
        )

    # 2. One worker, then two workers at once; same global batch (--batch-size 8).
    single_port, *pair = free_ports(3)
    single = edge_train(
        work / "single", {"TF_CONFIG": tf_config([single_port], 0)}, args.data, weights
    )
    single_log, _ = single.communicate(timeout=args.timeout)
    (work / "single.log").write_text(single_log)
    workers = [
        edge_train(
            work / ("two" if i == 0 else "two-worker1"),
            {"TF_CONFIG": tf_config(pair, i)},
            args.data,
            weights,
        )
        for i in range(2)
    ]
    logs = [w.communicate(timeout=args.timeout)[0] for w in workers]
    for i, log in enumerate(logs):
        (work / f"worker{i}.log").write_text(log)
    codes = [single.returncode] + [w.returncode for w in workers]
    if not check(
        codes == [0, 0, 0],
        "single-worker run and both workers of the two-worker run finish",
        f"exit codes {codes}; logs in {work}",
    ):
        for name, log in (("single", single_log), ("worker0", logs[0]), ("worker1", logs[1])):
            print(f"--- {name} (last lines)\n" + "\n".join(log.strip().splitlines()[-8:]))
        return 1
    steps = [
        int(m.group(1)) if (m := STEPS_LINE.search(log)) else None for log in (single_log, *logs)
    ]
    check(
        steps[1] is not None and steps[1] == steps[2] and steps[1] > 0,
        "both workers ran the same number of training steps",
        f"worker 0: {steps[1]}, worker 1: {steps[2]}",
    )
    check(
        steps[0] == steps[1],
        "as many steps as the single worker with the same global batch",
        f"single: {steps[0]}",
    )

    # 3. Only the chief wrote.
    two = work / "two"
    check(
        (two / "metrics.json").is_file() and (two / "model.keras").is_file(),
        "the chief (worker 0) wrote a complete run folder",
        str(two),
    )
    leftovers = sorted(
        p.name for p in work.iterdir() if p.name.startswith(".") and p.name.endswith(".partial")
    )
    check(
        not (work / "two-worker1").exists() and not leftovers,
        "worker 1 wrote nothing (its --out does not exist) and no staging folder is left",
        f"staging folders: {leftovers}" if leftovers else "",
    )
    metrics = json.loads((two / "metrics.json").read_text())
    check(
        metrics.get("distributed", {}).get("workers") == 2
        and metrics["distributed"]["replicas"] == 2,
        "metrics.json records 2 workers, 2 replicas",
        json.dumps(metrics.get("distributed")),
    )

    # 4. Same metrics as one worker.
    reference = json.loads((work / "single" / "metrics.json").read_text())
    rows_one, rows_two = history(work / "single"), history(two)
    worst = max(
        (
            abs(float(a[k]) - float(b[k]))
            for a, b in zip(rows_one, rows_two)
            for k in ("loss", "val_loss")
        ),
        default=float("inf"),
    )
    check(
        len(rows_one) == len(rows_two) and worst <= TOLERANCE,
        f"every epoch's loss and val_loss within {TOLERANCE:g} of the single worker's",
        f"{len(rows_two)} epochs, largest difference {worst:.2e}",
    )
    for split in ("val", "test"):
        check(
            metrics[split]["confusion_matrix"] == reference[split]["confusion_matrix"],
            f"{split} confusion matrix equals the single worker's",
            f"accuracy {metrics[split]['accuracy']:.4f} vs {reference[split]['accuracy']:.4f}",
        )
    print(
        f"{'FAILED' if check.failed else 'passed'}: {check.failed} check(s) failed; "
        f"{time.monotonic() - started:.0f} s; runs and logs in {work}"
    )
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
