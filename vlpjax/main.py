"""`python -m vlpjax.main --config=configs/NAME.py[:ARG] [--workdir=DIR] [--config.KEY=VALUE ...]`

Trains and evaluates any recipe. Running again on the same workdir resumes exactly. Multi-host:
pass --coordinator_address/--num_processes/--process_id, or run where `jax.distributed` finds
them itself (TPU VMs, SLURM).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data's C++ chatter

from vlpjax.utils.config import apply_override, load_config
from vlpjax.utils.errors import VlpError


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m vlpjax.main", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    parser.add_argument("--workdir", default=None, help="default: workdirs/NAME[_ARG]")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() with auto-detection (TPU VM, SLURM)",
    )
    args, rest = parser.parse_known_args(argv)
    return args, parse_overrides(rest)


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    """`--config.KEY=VALUE` arguments -> [(KEY, VALUE)]."""
    overrides = []
    for item in items:
        if not item.startswith("--config.") or "=" not in item:
            raise VlpError(
                f"unrecognised argument '{item}' (overrides look like --config.KEY=VALUE)"
            )
        key, _, value = item[len("--config.") :].partition("=")
        overrides.append((key, value))
    return overrides


def default_workdir(spec: str) -> str:
    path, _, arg = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("workdirs", f"{name}_{arg}" if arg else name)


def main(argv=None) -> int:
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        config = load_config(args.config)
        for key, value in overrides:
            apply_override(config, key, value)
        if args.coordinator_address or args.distributed:
            import jax

            jax.distributed.initialize(
                coordinator_address=args.coordinator_address,
                num_processes=args.num_processes,
                process_id=args.process_id,
            )
        from vlpjax.train.trainer import train_and_evaluate

        workdir = args.workdir or default_workdir(args.config)
        metrics = train_and_evaluate(config, workdir)
    except VlpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in metrics.items() if k.startswith("eval/") and "chance" not in k}
    if summary:
        print("final: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(summary.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
