"""`python -m smcbench.inference.worker JOB.json`: measure one (model, backend) and print the result as one JSON
line (smcbench.inference.measure.run_job)."""

from __future__ import annotations

import json
import sys

from smcbench.inference.measure import Job, run_job

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(run_job(Job(**json.load(f)))))
