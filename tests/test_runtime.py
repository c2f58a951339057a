"""mmtune.runtime: how an entry point starts a local Ray."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import textwrap

from mmtune.runtime import CLEANER_LOGGER, quiet_train_cleaner


def test_quiet_train_cleaner_raises_the_cleaner_logger_only():
    cleaner, other = logging.getLogger(CLEANER_LOGGER), logging.getLogger("ray.train")
    old = cleaner.level, other.level
    try:
        cleaner.setLevel(logging.NOTSET)
        quiet_train_cleaner()
        assert cleaner.getEffectiveLevel() == logging.ERROR
        assert other.level == old[1]  # the rest of Ray Train's logging is untouched
    finally:
        cleaner.setLevel(old[0])


def test_a_local_ray_without_the_dashboard_quiets_the_cleaner_in_its_workers():
    """The hook runs in Ray's worker processes (where Train's cleaner actor logs), not only here.

    A fresh process: the test session's own Ray is started by conftest, not by init_ray.
    """
    temp = tempfile.mkdtemp(prefix="mmq")
    code = textwrap.dedent(f"""
        import logging, ray
        from mmtune.config import RayConfig
        from mmtune.runtime import CLEANER_LOGGER, init_ray
        init_ray(RayConfig(num_cpus=1, include_dashboard=False, object_store_memory_mb=128, temp_dir={temp!r}))

        @ray.remote(num_cpus=0)
        def level():
            return logging.getLogger(CLEANER_LOGGER).getEffectiveLevel()

        print("LEVEL", ray.get(level.remote()))
        ray.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"LEVEL {logging.ERROR}" in out.stdout, out.stdout[-2000:]
