"""Job submission against a real head node (issue F §2).

A head started with ``ray start --head`` on loopback (free ports, its own temp dir, token
authentication on with a token of its own: tests/cluster/local_head.py). Against it:

- the tiny pipeline goes in through the ``ray job submit`` CLI with
  ``--runtime-env cluster/runtime_env.yaml``, so the repository is zipped, uploaded and
  unpacked on the head the way a user's submission is;
- the same run with ``--resume`` goes in through ``JobSubmissionClient`` and skips every
  finished stage;
- a submission with the default, relative ``run.out_dir`` is refused in its first seconds,
  with the fix in the message (ray_jobs/_job.py);
- both logs are read back (``ray job logs``, ``get_job_logs``);
- the head is stopped without ``ray stop`` and none of its processes is left.

The pytest process only talks HTTP to the head (and runs the CLI in subprocesses), so the
session's ``ray_local`` is untouched. Run outputs go to a tmp dir, never into the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.local_head import LocalHead
from tests.teacher.conftest import free_port
from tests.training.test_pretrain import TINY

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
RAY = str(Path(sys.executable).parent / "ray")
JOB_TIMEOUT = 480  # seconds; a loaded 2-core machine runs the tiny pipeline in 1-3 minutes

# One round of the loop at its smallest: 4 pre-training steps, 4 test items per target,
# no forgetting split, 2 training steps on 4 randomly selected samples.
PIPELINE = [*TINY, "student.pretrain.steps=4", "student.pretrain.log_every=2", "student.max_new_tokens=24",
            "eval.num_actors=1", "eval.max_items_per_task=4", "eval.forgetting=false",
            "training.batch_size=4", "training.max_steps=2", "training.num_workers=1", "training.cpus_per_worker=0.5",
            "training.torch_threads=1", "training.coordination.interval=2", "training.coordination.probe_size=2",
            "retrieval.method=random", "retrieval.budget=4", "retrieval.rounds=1", "run.name=submitted",
            # its own port: the session's ray_local may still hold a Serve on 8000
            f"teacher.port={free_port()}"]
STAGES = ["data", "student", "evaluate_0", "select_1", "train_1", "evaluate_1"]


def runtime_env() -> dict:
    """cluster/runtime_env.yaml as the SDK takes it; its working_dir "." is the repository
    root, which the CLI resolves from its cwd and the SDK from the pytest process's."""
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert env["working_dir"] == "."
    return {**env, "working_dir": str(ROOT)}


def wait_terminal(client, job_id: str, timeout: float = JOB_TIMEOUT):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                              JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {timeout}s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(1)
    return status


def working_dir_copies(head: LocalHead, name: str = "*") -> list[Path]:
    """Where the head unpacked uploaded working_dirs (session_latest links to the session)."""
    return sorted({p.resolve() for p in head.temp_dir.glob(f"session_*/runtime_resources/working_dir_files/{name}")})


def cli(head: LocalHead, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", *args], check=False, cwd=ROOT, env=head.client_env(), capture_output=True, text=True,
                          timeout=timeout)


# ============================================================================ fixtures
@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = LocalHead(tmp_path_factory.mktemp("head"))
    try:
        h.start()
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def client(head):
    from ray.job_submission import JobSubmissionClient

    # The token goes in as a header: this process keeps RAY_AUTH_MODE=disabled for the
    # session's ray_local (conftest). The CLI below uses RAY_AUTH_MODE=token instead.
    return JobSubmissionClient(head.dashboard_url, headers=head.headers)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("job-out")


@pytest.fixture(scope="module")
def refused(client) -> str:
    """A submission with the default, relative run.out_dir/run.cache_dir; submitted before
    the pipeline so that it runs (and fails) while the pipeline does."""
    return client.submit_job(entrypoint="python -m ray_jobs.run_pipeline --config configs/demo.yaml run.name=lost",
                             runtime_env=runtime_env(), submission_id="mmtune-relative")


@pytest.fixture(scope="module")
def cli_job(head, out, refused):
    """``ray job submit`` (waits for the job and streams its logs, as a user sees it)."""
    t0 = time.monotonic()
    done = cli(head, "submit", "--submission-id", "mmtune-cli", "--runtime-env", str(RUNTIME_ENV), "--",
               "python", "-m", "ray_jobs.run_pipeline", "--config", "configs/demo.yaml", *PIPELINE,
               f"run.out_dir={out / 'runs'}", f"run.cache_dir={out / 'cache'}", timeout=JOB_TIMEOUT)
    print(f"ray job submit: {time.monotonic() - t0:.1f}s")
    return done


# ============================================================================ tests
@pytest.mark.parametrize("headers,want", [({}, 401), ({"Authorization": "Bearer " + "0" * 64}, 403)],
                         ids=["no-token", "wrong-token"])
@pytest.mark.ray
@pytest.mark.slow
def test_jobs_api_wants_the_token(head, headers, want):
    assert head.http_status("/api/jobs/", headers) == want
    assert head.http_status("/api/jobs/", head.headers) == 200


@pytest.mark.ray
@pytest.mark.slow
def test_cli_submit_runs_the_pipeline_from_the_uploaded_code(head, client, cli_job, out):
    assert cli_job.returncode == 0, cli_job.stdout[-4000:] + cli_job.stderr[-2000:]
    said = cli_job.stdout + cli_job.stderr
    assert "Job 'mmtune-cli' succeeded" in said  # what `ray job status` prints, once the job ended
    assert client.get_job_status("mmtune-cli") == "SUCCEEDED"

    logs = cli(head, "logs", "mmtune-cli").stdout
    for stage in STAGES:
        assert f"[run] {stage}: done in" in logs
    assert "accuracy per round (random; r0 = generic student)" in logs
    table = logs[logs.index("accuracy per round"):]
    assert re.search(r"^count_grid/test\s+count_grid\s+[\d.]+\s+[\d.]+\s+[\d.]+$", table, re.MULTILINE), table[:800]
    run_dir = out / "runs" / "submitted"
    assert f"report: {run_dir / 'report.html'}" in logs

    # The outputs are where the job was told to write them, outside Ray's copy of the code.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    assert all(s["state"] == "done" for s in manifest["stages"].values())
    assert (run_dir / "report.html").stat().st_size > 0

    # What was uploaded: the working_dir package, unpacked on the head, is the code and
    # configs without .git, .venv, runs/ or caches, and small.
    uri = client.get_job_info("mmtune-cli").runtime_env["working_dir"]
    assert re.fullmatch(r"gcs://_ray_pkg_[0-9a-f]+\.zip", uri), uri
    [copy] = working_dir_copies(head, uri[len("gcs://"):-len(".zip")])
    files = [p for p in copy.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"working_dir package: {len(files)} files, {size / 2**20:.2f} MiB unpacked")
    assert (copy / "ray_jobs" / "run_pipeline.py").is_file() and (copy / "configs" / "demo.yaml").is_file()
    shipped = {part for p in files for part in p.relative_to(copy).parts}
    assert not shipped & {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
    assert size < 10 * 2**20  # Ray warns about packages over 10 MiB; ours is a few


@pytest.mark.ray
@pytest.mark.slow
def test_sdk_resume_skips_every_finished_stage(client, cli_job, out):
    assert cli_job.returncode == 0, "needs the CLI job's run"
    t0 = time.monotonic()
    job = client.submit_job(
        entrypoint=" ".join(["python -m ray_jobs.run_pipeline --config configs/demo.yaml --resume", *PIPELINE,
                             f"run.out_dir={out / 'runs'}", f"run.cache_dir={out / 'cache'}"]),
        runtime_env=runtime_env(), submission_id="mmtune-sdk-resume", metadata={"by": "tests/cluster"})
    status = wait_terminal(client, job)
    print(f"resume job: {time.monotonic() - t0:.1f}s")
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert client.get_job_info(job).metadata == {"by": "tests/cluster"}
    skipped = re.findall(r"^\[run\] (\w+): unchanged, skipped", logs, re.MULTILINE)
    assert skipped == STAGES, logs[-4000:]
    assert not re.search(r"^\[run\] \w+: running", logs, re.MULTILINE)  # nothing was run again
    assert "accuracy per round (random; r0 = generic student)" in logs
    assert f"report: {out / 'runs' / 'submitted' / 'report.html'}" in logs


@pytest.mark.ray
@pytest.mark.slow
def test_relative_output_paths_are_refused_with_the_fix(head, client, refused, cli_job):
    status = wait_terminal(client, refused, timeout=120)
    logs = client.get_job_logs(refused)
    assert status == "FAILED", logs[-3000:]
    assert "exit code 2" in client.get_job_info(refused).message
    [err] = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert "run.out_dir='runs'" in err and "run.cache_dir='runs/_cache'" in err
    assert "run.out_dir=/mnt/cluster_storage/runs" in err and "docs/operations.md" in err
    assert "Connecting to existing Ray cluster" not in logs  # refused before any work
    copies = working_dir_copies(head)
    assert copies and not any((c / "runs").exists() for c in copies)


@pytest.mark.ray
@pytest.mark.slow
def test_stop_ends_every_process_of_the_head(head, client, cli_job):
    # last of the head's tests: the ones above need it running
    names = head.process_names()
    assert {"gcs_server", "raylet"} <= names, names
    procs = head.processes()
    groups = set()
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(p.pid))  # workers and job drivers have groups of their own
    print(f"head: {len(procs)} processes in {len(groups)} process groups")
    head.stop()
    assert head.leftovers() == []
    assert head.http_status("/api/version") is None  # nothing listens on the dashboard port


# ============================================================================ no Ray needed
def _as_job_driver(monkeypatch, tmp_path, runtime_env: dict) -> None:
    """What the job supervisor gives a driver: the job's config in the environment, and
    the working_dir copy as cwd."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": runtime_env, "metadata": {}}))
    monkeypatch.chdir(tmp_path)


def test_output_path_check_is_for_jobs_with_a_working_dir(monkeypatch, tmp_path, capsys):
    from mmtune.config import ConfigError, load_config
    from ray_jobs._job import check_output_paths, run_cli

    relative = load_config(None, [])
    absolute = load_config(None, [f"run.out_dir={tmp_path}/runs", f"run.cache_dir={tmp_path}/cache"])
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    check_output_paths(relative)  # on a laptop, relative paths mean what they always did

    _as_job_driver(monkeypatch, tmp_path, {"env_vars": {"A": "1"}})
    check_output_paths(relative)  # a job without a working_dir runs where the code is (a RayJob's image)

    _as_job_driver(monkeypatch, tmp_path, {"working_dir": "gcs://_ray_pkg_0123.zip"})
    check_output_paths(absolute)
    with pytest.raises(ConfigError, match=r"run\.out_dir='runs'.*run\.cache_dir='runs/_cache'") as e:
        check_output_paths(relative)
    assert str(tmp_path) in str(e.value)  # names the copy it would have written into
    with pytest.raises(ConfigError, match=r"--out='idx'.*--out /mnt/cluster_storage/<dir>"):
        check_output_paths(absolute, extra={"--out": "idx"})
    check_output_paths(absolute, fields=("run.cache_dir",), extra={"--out": None})

    # the scripts: refused with one error line and exit code 2, before any work
    assert run_cli(["search"], ["--out", "idx", f"run.out_dir={tmp_path}", f"run.cache_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith("error: relative output path(s) in a Ray job: --out='idx'")
    assert run_cli(["run"], ["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
