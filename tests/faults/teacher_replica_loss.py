"""Driver: kill a teacher replica while diagnosis requests stream in (issue F §4).

``python -m tests.faults.teacher_replica_loss OUT.json`` (see ``inproc_cluster.py``). On a
head plus two worker nodes, the teacher Serve app (``mmtune.teacher.serve``, a tiny random
HF Llama as in tests/teacher) runs with two ``TeacherModel`` replicas. Client threads send
diagnosis requests over real HTTP through mmtune's own client: a :class:`Teacher` over
:class:`OpenAIBackend` pointed at the app's OpenAI-compatible routes, which is how the
pipeline uses a remote teacher (``teacher.backend=openai``). Each request is one wrong
item's analysis (the answer switch's scoring calls, then the skill question).

Once a third of the requests are done (counted, not slept for), the first replica seen
with requests in flight (Serve's own queue-length probe on the replica actor) is killed
with ``ray.kill``; Serve starts a replacement. Every request's outcome is recorded: its
analysis, or the exception that escaped the client's retries, or nothing (lost). A first
pass without a kill gives each item's deterministic answer-switch result, which the pass
under the kill must reproduce (a retried request is answered as if nothing happened).
The client's retries are counted from its log (one warning per retry).

``run(work)`` needs a connected cluster: ``cluster_faults.py`` runs it beside the
uninterrupted Train run, so the stream also competes with training for the CPUs.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

N_REQUESTS = 32
CLIENTS = 4  # concurrent callers, so requests are in flight on both replicas at the kill
KILL_AFTER = N_REQUESTS // 3


class _RetryCounter(logging.Handler):
    """Counts the client's retry warnings (OpenAIBackend logs one per retry)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "retry" in msg:
            self.retries.append(msg[:300])


def replicas(app: str) -> dict[str, Any]:
    """The app's TeacherModel replica actors by name (named actors in Serve's namespace)."""
    import ray

    from mmtune.teacher.serve import MODEL_DEPLOYMENT

    prefix = f"SERVE_REPLICA::{app}#{MODEL_DEPLOYMENT}#"
    return {a["name"]: a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)}


def running_replicas(app: str) -> int:
    from ray import serve

    from mmtune.teacher.serve import MODEL_DEPLOYMENT

    st = serve.status().applications[app].deployments[MODEL_DEPLOYMENT]
    return int(st.replica_states.get("RUNNING", 0))


def stream(teacher, items: list[dict[str, Any]], on_done=None) -> dict[str, Any]:
    """Send one analyse request per item from CLIENTS threads; every outcome is kept."""
    outcomes: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(it: dict[str, Any]) -> None:
        t0 = time.time()
        try:
            got = teacher.analyse([it])
            out = {"ok": True, "analyses": [a.to_dict() for a in got]}
        except Exception as e:  # noqa: BLE001 - a failed request is what the test counts
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        out.update(t0=t0, t1=time.time())
        with lock:
            outcomes[it["id"]] = out
            n = len(outcomes)
        if on_done is not None:
            on_done(n)

    t0 = time.time()
    pool = ThreadPoolExecutor(CLIENTS)
    futs = [pool.submit(one, it) for it in items]
    _, not_done = wait(futs, timeout=180)  # what has not returned by then counts as lost
    pool.shutdown(wait=False, cancel_futures=True)
    return {"outcomes": outcomes, "sent": len(items), "not_finished": len(not_done),
            "wall_s": round(time.time() - t0, 2)}


def prepare(work: Path) -> Path:
    """The tiny random teacher of tests/teacher, saved as an HF directory under ``work``."""
    from tests.teacher.conftest import make_tiny_teacher

    work.mkdir(parents=True, exist_ok=True)
    return make_tiny_teacher(work / "teacher")


def deploy(model_dir: Path) -> dict[str, Any]:
    """Start Serve and the teacher app (2 model replicas) without waiting for it to be up;
    return once its replica actors are placed on a node, with where they went (the
    cluster driver deploys while the head is the only node)."""
    from ray import serve

    from mmtune.config import load_config
    from mmtune.teacher.serve import build_app
    from tests.teacher.conftest import free_port, serve_overrides

    port = free_port()
    cfg = load_config(None, serve_overrides(model_dir, port, "teacher.autoscaling.min_replicas=2",
                                            "teacher.autoscaling.max_replicas=2"))
    app = cfg.teacher.serve.app_name
    t0 = time.time()
    # One HTTP proxy, on the head: every node here shares one loopback, and a proxy per node
    # (Serve's default) would fight over the port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([serve.RunTarget(build_app(cfg), name=app, route_prefix=cfg.teacher.serve.route_prefix,
                                    logging_config={"enable_access_log": False})],
                   wait_for_applications_running=False)
    placed = placed_replicas(app, 3, timeout_s=120)  # 2 model replicas and the ingress
    return {"cfg": cfg, "model_dir": model_dir, "t_deploy": t0, "placed_on": placed,
            "placed_s": round(time.time() - t0, 1)}


def placed_replicas(app: str, n: int, timeout_s: float) -> dict[str, str]:
    """Name -> node id of the app's replica actors, once ``n`` of them have a node (the GCS
    actor table; Ray's state API needs the dashboard, which this cluster runs without)."""
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{app}#"
    t0 = time.time()
    while True:
        got = {a["Name"]: a["Address"]["NodeID"] for a in actors().values()
               if a["Name"].startswith(prefix) and a["State"] != "DEAD" and a["Address"]["NodeID"].strip("0")}
        if len(got) >= n:
            return got
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"{len(got)} of {n} replicas of {app!r} placed after {timeout_s:.0f} s")
        time.sleep(0.1)


def exercise(served: dict[str, Any]) -> dict[str, Any]:
    """Wait for the app, stream the baseline, stream again and kill a replica; the
    measurements. Serve is shut down on the way out."""
    import ray
    from ray import serve

    from mmtune.teacher.backend import OpenAIBackend
    from mmtune.teacher.serve import teacher_url, wait_healthy
    from mmtune.teacher.teacher import Teacher
    from tests.teacher.conftest import wrong_items

    cfg, app = served["cfg"], served["cfg"].teacher.serve.app_name
    t_start = time.time()
    report: dict[str, Any] = {"placed_on": served["placed_on"], "placed_s": served["placed_s"]}
    counter = _RetryCounter()
    client_log = logging.getLogger("mmtune.teacher.backend")
    client_log.addHandler(counter)
    try:
        wait_healthy(teacher_url(cfg), timeout_s=240)
        while running_replicas(app) < 2:
            if time.time() - served["t_deploy"] > 240:
                raise TimeoutError(f"2 teacher replicas were not RUNNING after 240 s: {serve.status()}")
            time.sleep(0.2)
        report["serve_up_s"] = round(time.time() - served["t_deploy"], 1)
        before = replicas(app)
        report["replicas_before"] = sorted(before)

        # the client: mmtune's own, as the pipeline configures it for teacher.backend=openai
        client_cfg = cfg.teacher.model_copy(update={"backend": "openai", "base_url": f"{teacher_url(cfg)}/v1",
                                                    "name_or_path": str(served["model_dir"])})
        backend = OpenAIBackend(client_cfg.base_url, client_cfg.name_or_path, timeout_s=client_cfg.timeout_s,
                                max_retries=client_cfg.max_retries, max_new_tokens=client_cfg.max_new_tokens)
        teacher = Teacher(backend, client_cfg)
        items = wrong_items(N_REQUESTS)

        report["baseline"] = stream(teacher, items)
        report["baseline_retries"] = len(counter.retries)
        counter.retries.clear()

        kill: dict[str, Any] = {}
        third = threading.Event()
        actors = {n: ray.get_actor(n, namespace=a["namespace"]) for n, a in before.items()}

        def killer() -> None:
            """Once a third of the requests are done, kill the first replica seen with
            requests in flight (Serve's own queue-length probe), so the kill hits live work."""
            try:
                third.wait(timeout=300)
                t0 = time.time()
                while time.time() - t0 < 30:
                    ongoing = {n: ray.get(a.get_num_ongoing_requests.remote(), timeout=10) for n, a in actors.items()}
                    busy = [n for n, k in sorted(ongoing.items()) if k > 0]
                    if busy:
                        break
                    time.sleep(0.01)
                victim = busy[0] if busy else min(actors)
                kill.update(done_at_kill=done_count[0], victim=victim, ongoing_at_kill=ongoing[victim],
                            t_kill=time.time())
                ray.kill(actors[victim], no_restart=True)
            except Exception as e:  # noqa: BLE001 - reported to the test
                kill["error"] = repr(e)

        done_count = [0]

        def kill_one(n_done: int) -> None:
            done_count[0] = n_done
            if n_done >= KILL_AFTER:
                third.set()

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        report["fault"] = stream(teacher, items, on_done=kill_one)
        th.join(timeout=60)
        report["kill"] = kill
        victim = kill.get("victim")
        report["retries"] = list(counter.retries)
        # Serve's controller replaces the dead replica (a new named actor); bounded wait
        while time.time() - kill.get("t_kill", 0) < 120:
            now = replicas(app)
            if victim not in now and set(now) - set(before):
                report["replacement_seen_s"] = round(time.time() - kill["t_kill"], 1)
                break
            time.sleep(0.2)
        report["replicas_after"] = sorted(replicas(app))
        report["running_after"] = running_replicas(app)
    finally:
        client_log.removeHandler(counter)
        serve.shutdown()
    report["total_s"] = round(time.time() - t_start, 1)
    return report


def run(work: Path) -> dict[str, Any]:
    """The whole scenario on the cluster the driver is connected to."""
    return exercise(deploy(prepare(work)))


if __name__ == "__main__":  # standalone: python -m tests.faults.teacher_replica_loss OUT.json
    from tests.faults.inproc_cluster import local_cluster, standalone_env

    standalone_env()
    out = Path(sys.argv[1]).resolve()
    with local_cluster({"num_cpus": 1}, [{"num_cpus": 1}, {"num_cpus": 1}]):
        out.write_text(json.dumps(run(out.parent / "teacher_replica_loss"), indent=1))
