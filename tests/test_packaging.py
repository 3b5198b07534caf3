"""The installed project lives under one namespace: ``cgpo.services`` and ``cgpo.trainer``, no top-level
``services`` or ``trainer`` that a user's own modules could shadow or collide with."""

import subprocess
import sys


def test_a_users_own_trainer_and_services_modules_do_not_shadow_the_project(tmp_path):
    (tmp_path / "trainer.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "services.py").write_text("raise SystemExit('the user module was imported')\n")
    probe = (
        "import importlib.util, sys\n"
        "sys.path.remove('') if '' in sys.path else None\n"
        "import cgpo.trainer.losses, cgpo.services.common.errors\n"
        "from cgpo.trainer.losses.crpg import crpg_loss\n"
        "assert importlib.util.find_spec('trainer') is None, importlib.util.find_spec('trainer')\n"
        "assert importlib.util.find_spec('services') is None, importlib.util.find_spec('services')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # The user's modules still import as theirs, next to the project.
    mine = subprocess.run([sys.executable, "-c", "import cgpo.trainer.losses, trainer"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "the user module was imported" in mine.stderr
