"""The Kubernetes profile (profiles/kubernetes) plans the grid through the real executor plugin:
a dry run with its settings, where only the object storage is swapped for a local folder (the
profile's S3 bucket is a placeholder, and a dry run asks the storage whether outputs exist).
Skipped with the reason where the plugins are not installed (.ci/run installs them)."""
import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.e2e
def test_the_kubernetes_profile_plans_every_job_with_a_gpu_for_the_gpu_rules(tmp_path):
    for plugin in ("snakemake_executor_plugin_kubernetes", "snakemake_storage_plugin_fs"):
        if importlib.util.find_spec(plugin) is None:
            pytest.skip(f"{plugin} is not installed (pip install {plugin.replace('_', '-')})")
    (tmp_path / "store").mkdir()
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                          "--workflow-profile", str(REPO / "profiles" / "kubernetes"), "--directory", str(tmp_path),
                          "--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "store")],
                         capture_output=True, text=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "This was a dry-run" in out
    jobs = re.findall(r"rule (\w+):\n(?:.*\n)*?    resources: (.*)", out)
    gpu = {rule for rule, resources in jobs if "gpu=1" in resources}
    assert gpu == {"train", "predict", "predict_prompted", "predict_untrained"}, jobs[:3]
    assert all("gpu_manufacturer=nvidia" in resources for rule, resources in jobs if rule in gpu)
