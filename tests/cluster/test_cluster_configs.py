"""Every YAML under ``cluster/`` is validated here: offline, with no cloud credentials, in
about a second.

- Cluster-launcher configs (``aws.yaml``, ``gcp.yaml``) go through Ray's own validator,
  the path ``ray up`` takes before it talks to a cloud: ``prepare_config`` (merge with the
  provider's defaults.yaml, fill per-type worker bounds) and ``validate_config`` (the JSON
  schema ``ray/autoscaler/ray-schema.json`` plus Ray's cross-field checks).
- The runtime_env goes through ``ray.runtime_env.RuntimeEnv`` and Ray's own packaging walk
  (the code that zips ``working_dir`` for ``ray job submit``), over this very checkout.
- KubeRay manifests are checked against the KubeRay v1 CRD fields they use (a minimal
  JSON schema written from ``ray-operator/apis/ray/v1/*_types.go``, strict on unknown
  fields: the API server silently prunes a misspelled field, so a typo in
  ``enableInTreeAutoscaling`` or ``authOptions`` would otherwise turn a feature off
  without a word).

And for every config: token authentication is on, the dashboard is not exposed (loopback
for the launcher, ClusterIP without Ingress on Kubernetes), and what is uploaded or synced
leaves out ``.git``, ``runs/``, ``.venv`` and caches.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"

LAUNCHER = ("aws.yaml", "gcp.yaml")
RUNTIME_ENVS = ("runtime_env.yaml",)
KUBERAY = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/storage.yaml")
VALIDATED = {*LAUNCHER, *RUNTIME_ENVS, *KUBERAY}

# What no upload or sync may carry (path components), and files it must carry.
NEVER_SHIPPED = (".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".cache", ".ruff_cache", ".mypy_cache")
MUST_SHIP = ("mmtune/__init__.py", "mmtune/config.py", "mmtune/data/__init__.py",
             "ray_jobs/run_pipeline.py", "configs/demo.yaml", "pyproject.toml")
STORAGE = "/mnt/cluster_storage"          # the shared mount every config uses
LOOPBACK = {"127.0.0.1", "localhost"}
# an environment variable that holds a secret: HF_TOKEN, RAY_AUTH_TOKEN, OPENAI_API_KEY, ...
SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD)(_|$)", re.IGNORECASE)
IMAGE_REPO_DIR = "/home/ray/mmtune"       # where cluster/kuberay/Dockerfile puts the repo


def load(rel: str) -> Any:
    return yaml.safe_load((CLUSTER / rel).read_text())


def load_all(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / rel).read_text()) if d is not None]


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) for every node of a parsed YAML document."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


def covers(patterns: list[str], name: str) -> bool:
    """Whether an exclude list names ``name`` (as ``name``, ``name/``, ``**/name``, ...)."""
    return any(p.strip("/").removeprefix("**/").removesuffix("/**").strip("/") == name for p in patterns)


# ================================================================== every YAML is covered
def test_every_yaml_under_cluster_is_validated():
    found = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml")}
    unknown, missing = found - VALIDATED, VALIDATED - found
    assert not unknown, (f"{sorted(unknown)} under cluster/ is validated by nothing: add it to LAUNCHER, "
                         "RUNTIME_ENVS or KUBERAY in tests/cluster/test_cluster_configs.py (and its checks)")
    assert not missing, f"{sorted(missing)} listed here but gone from cluster/"


@pytest.mark.parametrize("rel", sorted(VALIDATED))
def test_no_config_turns_auth_off_or_holds_a_token(rel):
    for doc in load_all(rel):
        for path, value in walk(doc):
            if isinstance(value, str):
                assert not re.search(r"RAY_AUTH_MODE\s*=\s*(?!token\b)", value), \
                    f"{rel}: {path} sets RAY_AUTH_MODE to other than token"
                assert not re.search(r"RAY_AUTH_TOKEN\s*=\s*\S", value), f"{rel}: {path} writes a token literally"
            if isinstance(value, dict) and value.get("name") == "RAY_AUTH_MODE":
                assert value.get("value") == "token", f"{rel}: {path} sets RAY_AUTH_MODE={value.get('value')!r}"
            if isinstance(value, dict) and value.get("name") == "RAY_AUTH_TOKEN":
                assert "value" not in value, f"{rel}: {path} writes a token literally (use a Secret)"
            if isinstance(value, dict):
                for k in value:
                    assert str(k) != "RAY_AUTH_TOKEN", f"{rel}: {path} holds RAY_AUTH_TOKEN"


# ========================================================== cluster launcher: AWS and GCP
def ray_validate(cfg: dict) -> dict:
    """What ``ray up`` does to a config before any cloud call (commands._bootstrap_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_validator(name):
    cfg = load(name)
    assert cfg["provider"]["type"] == name.removesuffix(".yaml")
    ray_validate(cfg)


@pytest.mark.parametrize("name", LAUNCHER)
def test_rays_validator_is_live_and_strict(name):
    """The validator really runs: a misspelled top-level key and a wrong type both fail."""
    cfg = load(name)
    typo = copy.deepcopy(cfg)
    typo["max_worker"] = typo.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(typo)
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(bad)


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_has_head_autoscaling_gpu_group_and_cpu_group(name):
    cfg = ray_validate(load(name))
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert types[head]["max_workers"] == 0, "the head type must not be scaled as a worker"
    assert types[head]["resources"].get("GPU", 0) == 0, "the head should not be a GPU machine"
    workers = {k: v for k, v in types.items() if k != head}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    cpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) == 0 and v["resources"].get("CPU", 0) >= 1}
    assert gpu, f"{name}: no GPU worker group"
    assert cpu, f"{name}: no CPU worker group for Ray Data"
    for k, v in {**gpu, **cpu}.items():
        assert v["min_workers"] == 0, f"{name}: {k} must scale from 0 (min_workers={v['min_workers']})"
        assert v["max_workers"] >= 1, f"{name}: {k} can never start (max_workers={v['max_workers']})"
    assert sum(v["max_workers"] for v in workers.values()) <= cfg["max_workers"], "groups exceed the global max_workers"
    assert cfg["idle_timeout_minutes"] > 0


def _ray_start(cmds: list[str]) -> list[str]:
    return [c for c in cmds if re.search(r"\bray start\b", c)]


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_turns_token_auth_on_everywhere(name):
    cfg = ray_validate(load(name))
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = _ray_start(cfg[key])
        assert starts, f"{name}: {key} starts no Ray"
        for c in starts:
            assert re.search(r"\bRAY_AUTH_MODE=token\b", c.split("ray start")[0]), \
                f"{name}: `{c}` does not set RAY_AUTH_MODE=token before `ray start`"
    # every later shell on the node (ray exec, ray job CLI on the head, the autoscaler's
    # commands) gets it too
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in cfg["initialization_commands"])
    # the token reaches every node as a file (file_mounts go to the head, then to workers)
    mounts = {k: v for k, v in cfg["file_mounts"].items() if k.endswith("/.ray/auth_token")}
    assert list(mounts.values()) == ["~/.ray/auth_token"], \
        f"{name}: the token file is not mounted: {cfg['file_mounts']}"
    assert any(c.startswith("chmod 600 ~/.ray/auth_token") for c in cfg["setup_commands"])


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_dashboard_on_loopback_only(name):
    cfg = ray_validate(load(name))
    (head,) = _ray_start(cfg["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    assert hosts and set(hosts) <= LOOPBACK, f"{name}: head dashboard host {hosts}; it must be loopback"
    for path, value in walk(cfg):
        if isinstance(value, str) and not path.startswith("provider._"):
            assert "0.0.0.0" not in value, f"{name}: {path} mentions 0.0.0.0: {value!r}"
    assert "security_group" not in cfg["provider"], "a custom security group must not open 8265; review it here"


def repo_mounts(cfg: dict) -> dict[str, str]:
    """{path in the repository: remote path} of the file_mounts that sync repository parts."""
    out = {}
    for remote, local in cfg["file_mounts"].items():
        if local.startswith("./") or local == ".":
            out[local.removeprefix("./").rstrip("/") or "."] = remote
    return out


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_syncs_what_pip_needs_and_nothing_else(name):
    mounts = repo_mounts(load(name))
    assert {"pyproject.toml", "README.md", "mmtune", "ray_jobs"} <= set(mounts), f"{name}: {mounts}"
    assert "." not in mounts, f"{name}: mounting the whole repository makes `ray up` hash .venv and runs/"
    root = str(Path(mounts["pyproject.toml"]).parent)
    for local, remote in mounts.items():
        assert remote == f"{root}/{local}", f"{name}: {local} is synced to {remote}, not under {root}"
        assert (ROOT / local).exists(), f"{name}: {local} is not in the repository"
        assert not set(Path(local).parts) & set(NEVER_SHIPPED), f"{name} syncs {local}"


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_installs_cuda_torch_before_mmtune(name):
    cfg = ray_validate(load(name))
    repo = str(Path(repo_mounts(cfg)["pyproject.toml"]).parent)
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if re.search(r"pip install .*torch", c))
    mmtune_at = next(i for i, c in enumerate(setup) if f'pip install -e "{repo}[gpu]"' in c)
    assert torch_at < mmtune_at, f"{name}: torch must be installed before mmtune"
    assert "<2.14" in setup[torch_at], "torch must keep mmtune's upper bound"
    for c in _ray_start(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]):
        assert "--metrics-export-port=8080" in c, "every node should export metrics on a known port"
    assert any(STORAGE in c for c in setup), f"{name}: {STORAGE} is not prepared"


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_sync_excludes_git_runs_venv_and_caches(name):
    excludes = load(name)["rsync_exclude"]
    for n in (*NEVER_SHIPPED, "*.egg-info"):
        assert covers(excludes, n), f"{name}: rsync_exclude misses {n}"


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed here")
@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_sync_excludes_with_real_rsync(name, tmp_path):
    """What `ray up` would sync of this checkout, listed by rsync itself: a dry run per
    mount with the same --exclude arguments Ray's command runner builds."""
    cfg = load(name)
    args = [a for p in cfg["rsync_exclude"] for a in ("--exclude", p)]
    shipped = set()
    for local in repo_mounts(cfg):
        src = ROOT / local
        out = subprocess.run(["rsync", "-an", "--out-format=%n", *args, f"{src}/" if src.is_dir() else str(src),
                              f"{tmp_path}/dest/"], check=True, capture_output=True, text=True).stdout.split()
        shipped |= {(f"{local}/{p}" if src.is_dir() else p).rstrip("/") for p in out if p != "./"}
    for p in shipped:
        parts = set(Path(p).parts)
        assert not parts & set(NEVER_SHIPPED) and not any(x.endswith(".egg-info") for x in parts), f"{name} syncs {p}"
    assert set(MUST_SHIP) <= shipped, f"{name} leaves out {set(MUST_SHIP) - shipped}"


# ================================================================== runtime_env (jobs)
def packaged_files(working_dir: Path, excludes: list[str]) -> dict[str, int]:
    """{relative path: size} of what Ray zips for ``working_dir`` with ``excludes``, walked
    by Ray's own packaging code, without .gitignore (the excludes must suffice alone)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: dict[str, int] = {}

    def handler(p: Path) -> None:
        if p.is_file():
            files[p.relative_to(working_dir).as_posix()] = p.stat().st_size

    _dir_travel(working_dir, [_get_excludes(working_dir, excludes)], handler, include_gitignore=False)
    return files


@pytest.mark.parametrize("name", RUNTIME_ENVS)
def test_runtime_env_is_accepted_by_ray(name):
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**load(name))
    assert env.working_dir() == "."


@pytest.mark.parametrize("name", RUNTIME_ENVS)
def test_runtime_env_upload_leaves_out_git_runs_venv_and_caches(name):
    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING

    cfg = load(name)
    for n in (*NEVER_SHIPPED, "*.egg-info"):
        assert covers(cfg["excludes"], n), f"{name}: excludes miss {n}"
    files = packaged_files(ROOT, cfg["excludes"])  # working_dir "." = the repository root
    for p in files:
        parts = set(Path(p).parts)
        assert not parts & set(NEVER_SHIPPED) and not any(x.endswith(".egg-info") for x in parts), f"{name} uploads {p}"
    assert set(MUST_SHIP) <= set(files), f"{name} leaves out {set(MUST_SHIP) - set(files)}"
    total = sum(files.values())
    assert total < PACKAGE_SIZE_WARNING, f"the working_dir package would be {total / 2**20:.0f} MiB"


@pytest.mark.parametrize("name", RUNTIME_ENVS)
def test_runtime_env_carries_no_secrets(name):
    for k in load(name).get("env_vars", {}):
        assert not SECRET_NAME.search(k), \
            f"{name}: env_vars.{k}: the Jobs API shows runtime_env to anyone who can list jobs"


# ============================================================================= KubeRay
def _obj(props: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_ANY_OBJ = {"type": "object"}
_QTY = {"type": ["string", "integer"]}
_RESOURCES = _obj({"requests": {"type": "object", "additionalProperties": _QTY},
                   "limits": {"type": "object", "additionalProperties": _QTY}})
_ENV = {"type": "array", "items": _obj({"name": _STR, "value": _STR, "valueFrom": _ANY_OBJ}, ("name",))}
# A subset of core/v1 Container, PodSpec and Volume: the fields these manifests use, plus
# common ones. Strict, so that a misspelled field fails here rather than being pruned.
_CONTAINER = _obj({
    "name": _STR, "image": _STR, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": {"type": "array"}, "args": {"type": "array"}, "env": _ENV, "envFrom": {"type": "array"},
    "ports": {"type": "array",
              "items": _obj({"containerPort": _INT, "name": _STR, "protocol": _STR}, ("containerPort",))},
    "resources": _RESOURCES,
    "volumeMounts": {"type": "array", "items": _obj({"name": _STR, "mountPath": _STR, "readOnly": _BOOL,
                                                     "subPath": _STR}, ("name", "mountPath"))},
    "lifecycle": _ANY_OBJ, "securityContext": _ANY_OBJ, "readinessProbe": _ANY_OBJ, "livenessProbe": _ANY_OBJ,
    "workingDir": _STR,
}, ("name", "image"))
_VOLUME = _obj({"name": _STR, "persistentVolumeClaim": _obj({"claimName": _STR, "readOnly": _BOOL}, ("claimName",)),
                "emptyDir": _obj({"medium": _STR, "sizeLimit": _QTY}), "configMap": _ANY_OBJ, "secret": _ANY_OBJ,
                "hostPath": _ANY_OBJ}, ("name",))
_POD_TEMPLATE = _obj({
    "metadata": _obj({"labels": _STRMAP, "annotations": _STRMAP}),
    "spec": _obj({"containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                  "initContainers": {"type": "array", "items": _CONTAINER},
                  "volumes": {"type": "array", "items": _VOLUME},
                  "tolerations": {"type": "array", "items": _obj({"key": _STR, "operator": _STR, "value": _STR,
                                                                  "effect": _STR, "tolerationSeconds": _INT})},
                  "nodeSelector": _STRMAP, "affinity": _ANY_OBJ, "serviceAccountName": _STR,
                  "securityContext": _ANY_OBJ, "imagePullSecrets": {"type": "array"},
                  "priorityClassName": _STR, "terminationGracePeriodSeconds": _INT}, ("containers",)),
}, ("spec",))
_METADATA = _obj({"name": _STR, "namespace": _STR, "labels": _STRMAP, "annotations": _STRMAP}, ("name",))

# ray.io/v1 RayClusterSpec (raycluster_types.go), the fields used here and their siblings.
RAY_CLUSTER_SPEC = _obj({
    "rayVersion": _STR,
    "enableInTreeAutoscaling": _BOOL,
    "autoscalerOptions": _obj({"upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                               "idleTimeoutSeconds": _INT, "resources": _RESOURCES, "image": _STR,
                               "imagePullPolicy": _STR, "env": _ENV, "envFrom": {"type": "array"},
                               "securityContext": _ANY_OBJ, "volumeMounts": {"type": "array"}}),
    "authOptions": _obj({"mode": {"enum": ["disabled", "token"]}, "secretName": _STR, "enableK8sTokenAuth": _BOOL}),
    "headServiceAnnotations": _STRMAP,
    "suspend": _BOOL,
    "headGroupSpec": _obj({"rayStartParams": _STRMAP, "template": _POD_TEMPLATE,
                           "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                           "enableIngress": _BOOL, "headService": _ANY_OBJ}, ("rayStartParams", "template")),
    "workerGroupSpecs": {"type": "array", "items": _obj({
        "groupName": _STR, "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
        "idleTimeoutSeconds": _INT, "rayStartParams": _STRMAP, "template": _POD_TEMPLATE,
        "numOfHosts": _INT, "scaleStrategy": _ANY_OBJ, "suspend": _BOOL,
    }, ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"))},
}, ("headGroupSpec",))

SCHEMAS = {
    ("ray.io/v1", "RayCluster"): _obj({"apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
                                       "spec": RAY_CLUSTER_SPEC}, ("apiVersion", "kind", "metadata", "spec")),
    # ray.io/v1 RayJobSpec (rayjob_types.go)
    ("ray.io/v1", "RayJob"): _obj({"apiVersion": _STR, "kind": _STR, "metadata": _METADATA, "spec": _obj({
        "entrypoint": _STR, "runtimeEnvYAML": _STR, "rayClusterSpec": RAY_CLUSTER_SPEC,
        "clusterSelector": _STRMAP, "shutdownAfterJobFinishes": _BOOL, "ttlSecondsAfterFinished": _INT,
        "activeDeadlineSeconds": _INT, "backoffLimit": _INT, "jobId": _STR, "metadata": _STRMAP, "suspend": _BOOL,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "submitterPodTemplate": _POD_TEMPLATE, "submitterConfig": _obj({"backoffLimit": _INT}),
        "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
        "entrypointResources": _STR, "deletionPolicy": _STR, "managedBy": _STR,
    }, ("entrypoint",))}, ("apiVersion", "kind", "metadata", "spec")),
    # core/v1 PersistentVolumeClaim
    ("v1", "PersistentVolumeClaim"): _obj({"apiVersion": _STR, "kind": _STR, "metadata": _METADATA, "spec": _obj({
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                                            "ReadWriteOncePod"]}},
        "resources": _RESOURCES, "storageClassName": _STR, "volumeMode": _STR, "volumeName": _STR,
        "selector": _ANY_OBJ}, ("accessModes", "resources"))}, ("apiVersion", "kind", "metadata", "spec")),
}


# one validator per schema, built once (jsonschema.validate re-checks the schema each call)
VALIDATORS = {k: jsonschema.Draft202012Validator(v) for k, v in SCHEMAS.items()}


def kuberay_docs() -> list[tuple[str, dict]]:
    return [(rel, d) for rel in KUBERAY for d in load_all(rel)]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: a RayCluster's spec and a RayJob's rayClusterSpec."""
    out = []
    for rel, d in kuberay_docs():
        if d["kind"] == "RayCluster":
            out.append((f"{rel}:spec", d["spec"]))
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            out.append((f"{rel}:spec.rayClusterSpec", d["spec"]["rayClusterSpec"]))
    return out


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec.get("workerGroupSpecs", []))]


@pytest.mark.parametrize("rel", KUBERAY)
def test_kuberay_manifest_matches_the_crd_fields(rel):
    docs = load_all(rel)
    assert docs, f"{rel} is empty"
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        assert key in SCHEMAS, f"{rel}: {key} has no schema here (allowed: {sorted(SCHEMAS)})"
        VALIDATORS[key].validate(d)


def test_kuberay_schema_is_strict():
    """A misspelled CRD field is refused here (the API server would silently drop it)."""
    (d,) = load_all("kuberay/raycluster.yaml")
    bad = copy.deepcopy(d)
    bad["spec"]["enableInTreeAutoscalling"] = bad["spec"].pop("enableInTreeAutoscaling")
    with pytest.raises(jsonschema.ValidationError):
        VALIDATORS[("ray.io/v1", "RayCluster")].validate(bad)
    bad = copy.deepcopy(d)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    with pytest.raises(jsonschema.ValidationError):
        VALIDATORS[("ray.io/v1", "RayCluster")].validate(bad)


def test_every_ray_cluster_spec_is_checked():
    kinds = {d["kind"] for _, d in kuberay_docs()}
    assert {"RayCluster", "RayJob", "PersistentVolumeClaim"} <= kinds
    assert len(cluster_specs()) == 2


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_autoscaling_gpu_group_from_zero_and_cpu_group(where, spec):
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: the autoscaler is off"
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups), "groupName must be unique"

    def gpus(g):
        c = g["template"]["spec"]["containers"][0]["resources"]
        return int(c.get("limits", {}).get("nvidia.com/gpu", 0))

    gpu = [g for g in groups if gpus(g) >= 1]
    cpu = [g for g in groups if gpus(g) == 0]
    assert gpu and cpu, f"{where}: want a GPU group and a CPU group, got {[g['groupName'] for g in groups]}"
    for g in groups:
        assert g["minReplicas"] == 0, f"{where}: {g['groupName']} must scale from 0"
        assert g["maxReplicas"] >= 1, f"{where}: {g['groupName']} can never start"
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
    head_gpus = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in head_gpus, "the head should not hold a GPU"


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_token_auth_on(where, spec):
    import ray

    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: authOptions.mode must be token"
    version = tuple(int(x) for x in spec["rayVersion"].split(".")[:2])
    assert version >= (2, 52), "Ray token authentication needs Ray 2.52 or newer"
    assert version == tuple(int(x) for x in ray.__version__.split(".")[:2]), \
        f"{where}: rayVersion {spec['rayVersion']} is not the Ray mmtune pins ({ray.__version__})"
    assert spec["authOptions"].get("enableK8sTokenAuth") is not True, "K8s-delegated auth does not support RayJob"


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_kuberay_dashboard_not_exposed(where, spec):
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: the head Service must be ClusterIP"
    assert head.get("enableIngress", False) is False, f"{where}: no Ingress for the dashboard"
    assert "headService" not in head, f"{where}: a custom head Service must be reviewed for exposure"
    for rel, d in kuberay_docs():
        assert d["kind"] not in ("Ingress", "Gateway", "Route"), f"{rel} exposes the cluster"
        if d["kind"] == "Service":
            assert d.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", f"{rel}: a public Service"


def test_kuberay_every_pod_mounts_the_shared_claim():
    (claim,) = [d for _, d in kuberay_docs() if d["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "pods on different nodes share it: ReadWriteMany"
    for where, spec in cluster_specs():
        for t in pod_templates(spec):
            vols = {v["name"]: v for v in t["spec"].get("volumes", [])}
            mounts = {m["mountPath"]: m["name"] for m in t["spec"]["containers"][0].get("volumeMounts", [])}
            assert STORAGE in mounts, f"{where}: a pod does not mount {STORAGE}"
            assert vols[mounts[STORAGE]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_rayjob_runs_the_pipeline_and_shuts_down():
    from ray.runtime_env import RuntimeEnv

    from mmtune.cli import build_parser
    from mmtune.config import load_config

    (job,) = [d for _, d in kuberay_docs() if d["kind"] == "RayJob"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.run_pipeline"], spec["entrypoint"]
    assert (ROOT / "ray_jobs" / "run_pipeline.py").is_file()
    args = build_parser().parse_args(["run", *argv[3:]])  # ray_jobs.run_pipeline forwards to `mmtune run`
    assert args.config.startswith(IMAGE_REPO_DIR + "/"), "the config must be a path inside the image"
    config = ROOT / Path(args.config).relative_to(IMAGE_REPO_DIR)
    assert config.is_file(), f"{args.config} is not in the repository (so not in the image)"
    cfg = load_config(str(config), args.overrides)  # raises on a bad override
    assert cfg.run.out_dir.startswith(STORAGE) and cfg.run.cache_dir.startswith(STORAGE), \
        "the run directory must outlive the job's cluster: put it on the shared claim"
    assert args.resume, "a retry (backoffLimit) on a new cluster should continue the run"
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)
    wd = env.get("working_dir")
    if wd and "://" not in wd:
        assert all(covers(env.get("excludes", []), n) for n in NEVER_SHIPPED), "a local working_dir needs excludes"
    for k in env.get("env_vars", {}):
        assert not SECRET_NAME.search(k), f"runtimeEnvYAML env_vars.{k}"


def test_rayjob_cluster_is_the_raycluster():
    """rayjob.yaml embeds raycluster.yaml's spec verbatim: one cluster definition."""
    (rc,) = load_all("kuberay/raycluster.yaml")
    (rj,) = load_all("kuberay/rayjob.yaml")
    assert rj["spec"]["rayClusterSpec"] == rc["spec"]


def test_image_build_leaves_out_git_runs_venv_and_caches():
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    ignore = [ln.strip() for ln in (CLUSTER / "kuberay" / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    for n in (*NEVER_SHIPPED, "*.egg-info"):
        assert covers(ignore, n), f"Dockerfile.dockerignore misses {n}"
    assert dockerfile.index('"torch>=2.4,<2.14"') < dockerfile.index(f'-e "{IMAGE_REPO_DIR}[gpu]"')
    (rc,) = load_all("kuberay/raycluster.yaml")
    base = re.search(r"rayproject/ray:(\d+\.\d+\.\d+)", dockerfile).group(1)
    assert base == rc["spec"]["rayVersion"], "the image's Ray must be the RayCluster's rayVersion"


# ========================================================================= the ops doc
def test_operations_doc_names_only_files_that_exist():
    doc = (ROOT / "docs" / "operations.md").read_text()
    path = r"(?<![\w./-])((?:cluster|configs|ray_jobs|docs|tests|mmtune)/[\w./-]+\.(?:yaml|py|md|json))\b"
    named = set(re.findall(path, doc))
    assert {"cluster/aws.yaml", "cluster/gcp.yaml", "cluster/runtime_env.yaml",
            "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml"} <= named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/operations.md names files that do not exist: {missing}"
    for mod in set(re.findall(r"python -m (ray_jobs\.\w+)", doc)):
        assert (ROOT / (mod.replace(".", "/") + ".py")).is_file(), mod
