#!/usr/bin/env python3
"""Run a quantcli manifest on a Ray cluster from your own Python: one Ray task per conversion.

Cluster set-up (every node: the same Python with `pip install 'quantcli[ray]'`; outputs on a filesystem all
nodes see, sources as Hub ids or on that shared filesystem):

    head node:     ray start --head --port=6379
    each worker:   ray start --address=<head-ip>:6379
    anywhere:      python examples/ray_cluster.py jobs.yaml --address auto        (or ray://<head-ip>:10001)

Try it on one machine with `--address local` (starts a private Ray instance). The CLI does the same with
`quantcli batch jobs.yaml --ray auto`; this script is the starting point when conversion is one step of a
larger Ray pipeline (e.g. add an upload or an eval task that consumes each result).

Each task is `quantcli.batch.run_job`: it skips outputs that are complete and current (sidecar
<output>.quantcli.json) and keeps a per-tensor cache beside the output, so a task that Ray retries after a
node failure (max_retries below) continues where the dead one stopped. Prints one JSON line per job;
exit status 10 if any job failed.
"""

from __future__ import annotations

import argparse
import json
import sys

import ray

from quantcli.batch import load_manifest, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="quantcli batch manifest (YAML or text)")
    parser.add_argument("--address", default="auto", help="Ray address: auto, ray://host:10001, or local")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a --address local instance")
    parser.add_argument("--cpus-per-job", type=int, default=1, help="CPUs reserved (and threads used) per job")
    parser.add_argument("--output-dir", default=None, help="directory for outputs the manifest does not name")
    parser.add_argument("--force", action="store_true", help="overwrite outputs this script did not make")
    args = parser.parse_args(argv)

    jobs = load_manifest(args.manifest, output_dir=args.output_dir)  # validates every entry first
    if args.address == "local":
        ray.init(num_cpus=args.num_cpus, log_to_driver=False)
    else:
        ray.init(address=args.address, log_to_driver=False)

    convert = ray.remote(num_cpus=args.cpus_per_job, max_retries=2)(run_job)
    pending = {convert.remote(job.to_dict(), args.force, args.cpus_per_job): job for job in jobs}
    failed = 0
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            job = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task died more often than max_retries allowed
                result = {"ok": False, "status": "failed", "output": job.output, "error": str(exc).splitlines()[0]}
            failed += not result["ok"]
            print(json.dumps(result), flush=True)
    ray.shutdown()
    print(f"{len(jobs) - failed} of {len(jobs)} jobs succeeded", file=sys.stderr)
    return 10 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
