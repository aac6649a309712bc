"""adakd tune on a PostgreSQL study database: a throwaway server (initdb in a temp dir, pg_ctl on a free port),
skipped with the reason where PostgreSQL is not installed or cannot start; an unreachable database is one message."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed (pip install -e '.[tune]')")
pytest.importorskip("psycopg", reason="psycopg is not installed (the tune extra brings psycopg[binary])")

from adakd.errors import ConfigError  # noqa: E402
from adakd.tools.tune.study import driver_url, run_tune  # noqa: E402
from test_tune import states, write_configs, write_space  # noqa: E402
from test_ddp import free_port  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.extended]  # a server per test: CI stage 2


def postgres_tool(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = postgres_tool("initdb"), postgres_tool("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="adakd-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    init = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
                            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True)
    if start.returncode != 0:
        log = (folder / "server.log").read_text()[-300:] if (folder / "server.log").exists() else start.stderr
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {log.strip()}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_study_on_postgresql_is_joined_by_a_second_worker(tmp_path, fmnist_root, postgres_url):
    config = write_configs(tmp_path, fmnist_root, epochs=1)
    space = write_space(tmp_path / "s.yaml", trials=2)
    first = run_tune(config, space, storage=postgres_url, out=tmp_path / "a", log=lambda m: None)
    assert first["finished"] == 2 and first["storage"] == postgres_url
    # another worker (another folder, as on another machine) with the same storage joins the same study
    second = run_tune(config, space, storage=postgres_url, out=tmp_path / "b", trials=3, log=lambda m: None)
    study = optuna.load_study(study_name="s", storage=driver_url(postgres_url))
    assert second["finished"] == 3 and states(study) == {"COMPLETE": 3}
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert [Path(t.user_attrs["run_dir"]).parent.parent.name for t in study.trials] == ["a", "a", "b"]


def test_an_unreachable_study_database_is_one_message(tmp_path, fmnist_root):
    config = write_configs(tmp_path, fmnist_root, epochs=1)
    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/studies"
    with pytest.raises(ConfigError, match=r"--storage postgresql://someone@127.0.0.1:\d+/studies: cannot open the "
                                          r"study database") as info:
        run_tune(config, write_space(tmp_path / "s.yaml"), storage=url, out=tmp_path / "a", log=lambda m: None)
    assert "secret" not in str(info.value)
    assert not (tmp_path / "a" / "trials").exists()
