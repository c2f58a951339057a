"""The run directory and its manifest: what ran, with which config and inputs, and where
its outputs are. ``--resume`` skips a stage whose key is unchanged and outputs exist.

``runs/<name>/manifest.json``::

    {"config": {...resolved RunConfig...}, "config_hash": "...",
     "stages": {"<stage>": {"state": "done" | "running" | "failed", "key": "...",
                            "inputs": {...}, "outputs": {...}, "started": t, "seconds": s,
                            "error": "..."}}}

A stage's *key* is the hash of the config it reads and the keys of the stages it consumes
(its inputs), so a change anywhere upstream re-runs everything downstream, and nothing else.
The manifest is rewritten atomically after every state change, so a driver killed mid-stage
leaves the stage ``running``, which ``--resume`` redoes.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmtune.config import RunConfig, config_hash

MANIFEST = "manifest.json"


class RunDir:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, progress: Callable[[str], None] = print):
        self.root = (Path(cfg.run.out_dir) / cfg.run.name).resolve()
        self.progress = progress
        path = self.root / MANIFEST
        chash = config_hash(cfg.to_dict())
        if path.is_file() and not resume:
            raise FileExistsError(f"{self.root} already holds a run; continue it with --resume, or pick another "
                                  f"run.name (e.g. run.name={cfg.run.name}-2)")
        if path.is_file():
            self.manifest = json.loads(path.read_text())
            if self.manifest.get("config_hash") != chash:
                progress(f"[run] the config changed since this run started ({self.manifest.get('config_hash')} → "
                         f"{chash}); stages whose inputs changed will run again")
        else:
            self.manifest = {"stages": {}}
        self.manifest.update(config=cfg.to_dict(), config_hash=chash)
        self.root.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2, default=str))
        tmp.replace(self.root / MANIFEST)

    def key(self, name: str) -> str | None:
        st = self.manifest["stages"].get(name)
        return st["key"] if st and st.get("state") == "done" else None

    def outputs(self, name: str) -> dict[str, Any]:
        return self.manifest["stages"][name]["outputs"]

    def stage(self, name: str, config: Any, inputs: dict[str, str | None], fn: Callable[[], dict[str, Any]],
              paths: Callable[[dict[str, Any]], list[str]] = lambda o: []) -> tuple[str, dict[str, Any]]:
        """Run ``fn`` unless an identical stage is done and its output ``paths`` exist.

        ``inputs`` maps upstream stage names to their keys. Returns (key, outputs)."""
        key = config_hash({"config": config, "inputs": inputs})
        st = self.manifest["stages"].get(name)
        if (st and st.get("state") == "done" and st.get("key") == key
                and all(Path(p).exists() for p in paths(st["outputs"]))):
            self.progress(f"[run] {name}: unchanged, skipped (done in {st.get('seconds', 0):.0f}s earlier)")
            return key, st["outputs"]
        self.manifest["stages"][name] = {"state": "running", "key": key, "inputs": inputs, "started": time.time()}
        self.save()
        self.progress(f"[run] {name}: running")
        t0 = time.time()
        try:
            outputs = fn()
        except BaseException as e:
            self.manifest["stages"][name].update(state="failed", error=f"{type(e).__name__}: {e}",
                                                 traceback=traceback.format_exc()[-4000:],
                                                 seconds=round(time.time() - t0, 1))
            self.save()
            raise
        self.manifest["stages"][name].update(state="done", outputs=outputs, seconds=round(time.time() - t0, 1))
        self.save()
        self.progress(f"[run] {name}: done in {time.time() - t0:.1f}s")
        return key, outputs
