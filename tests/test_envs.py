"""The conda envs (users' clusters) and the pip pins (README commands, CI) must agree."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
NOT_IN_PIP = {"python", "pip"}  # the interpreter and the installer itself
DRIVER_ONLY = {  # run the workflow and the tests, not a stage's job
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "pyyaml",
    "jsonschema",
    "pytest",
    "trustme",
    "snakefmt",
    "ruff",
}


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def conda_pins(path: Path) -> dict[str, str]:
    pins = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(dep, dict):  # the pip: section
            for line in dep["pip"]:
                name, version = line.split("==")
                pins[name.lower()] = version
            continue
        match = re.fullmatch(r"([\w.-]+)=([\w.]+)", dep)
        assert match, f"{path.name}: '{dep}' is not an exact pin (name=version)"
        pins[CONDA_TO_PIP.get(match[1], match[1])] = match[2]
    return pins


def test_every_env_is_exactly_pinned_like_pip():
    pins = pip_pins()
    used = set()
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        for name, version in conda_pins(env).items():
            if name in NOT_IN_PIP:
                continue
            assert name in pins, f"{env.name}: {name} is not pinned in requirements.txt"
            assert pins[name] == version, (
                f"{env.name}: {name}={version} but requirements.txt pins {pins[name]}"
            )
            used.add(name)
    unused = set(pins) - used - DRIVER_ONLY
    assert not unused, f"pinned in requirements.txt but in no envs/*.yaml: {sorted(unused)}"


def test_envs_use_no_default_channels():
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        channels = yaml.safe_load(env.read_text())["channels"]
        assert "nodefaults" in channels and "defaults" not in channels, env.name


def test_lock_agrees_with_pins():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for name, version in pip_pins().items():
        assert lock.get(name) == version, f"requirements.lock has {name}=={lock.get(name)}"
