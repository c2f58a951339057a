"""How often a diagnosis names the right missing skill, scored against SkillWorld's chains.

    python -m bench.diagnosis_skills --skillworld runs/_cache/skillworld/<key> \\
        runs/<run>/round_1/diagnosis/diagnosis.parquet [more diagnosis files ...]

For each diagnosed error (status ok, a located step), the right skill is the one the
target task's *correct* chain exercises at the located step (from the generator's task
registry: benchmark-side, never read by the pipeline). Prints accuracy per task and overall.
Either SkillWorld family (vision or audio): the skills and chains come from the
directory's ``skillworld.json``, step kinds from ``ALL_STEPS``.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import pyarrow.parquet as pq

from mmtune.data.skillworld.tasks import ALL_STEPS


def skill_accuracy(diagnosis: str, registry: dict) -> dict[str, tuple[int, int]]:
    phrase = {k: v["phrase"].lower() for k, v in registry["skills"].items()}
    by: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in pq.read_table(diagnosis).to_pylist():
        if r["status"] != "ok" or not r["mistake_step"]:
            continue
        chain = registry["tasks"][r["task"]]["chain"]
        k = r["mistake_step"] - 1
        right = phrase[ALL_STEPS[chain[k]].skill] if k < len(chain) else None
        by[r["task"]][0] += right is not None and (r["missing_skill"] or "").strip().lower() == right
        by[r["task"]][1] += 1
    return {t: (a, n) for t, (a, n) in sorted(by.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skillworld", required=True, help="the SkillWorld directory (holds skillworld.json)")
    ap.add_argument("diagnosis", nargs="+")
    args = ap.parse_args()
    registry = json.loads((Path(args.skillworld) / "skillworld.json").read_text())
    tasks = sorted({t for d in args.diagnosis for t in skill_accuracy(d, registry)})
    print("| diagnosis | " + " | ".join(tasks) + " | all |")
    print("|---|" + "---:|" * (len(tasks) + 1))
    for d in args.diagnosis:
        acc = skill_accuracy(d, registry)
        a, n = sum(v[0] for v in acc.values()), sum(v[1] for v in acc.values())
        print(f"| {d} | " + " | ".join(f"{acc[t][0]}/{acc[t][1]}" if t in acc else "–" for t in tasks)
              + f" | {a}/{n} = {a / max(n, 1):.3f} |")


if __name__ == "__main__":
    main()
