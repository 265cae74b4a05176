"""The settings file: validation names the key and the fault; every key is documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vna import settings
from vna.errors import SettingsError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vna.toml"
    p.write_text(text)
    return p


def test_example_and_demo_files_load() -> None:
    example = settings.load(REPO / "etc" / "vna.example.toml")
    assert [s.name for s in example.sources] == ["pacs-a", "pacs-b"]
    assert example.sources[1].watch == "poll"
    assert example.sources[0].coerce.replace == {"Modality": {"MRI": "MR", "CAT": "CT"}}
    demo = settings.load(REPO / "etc" / "vna.demo.toml")
    assert demo.index.url.startswith("sqlite:////")


def test_every_key_is_in_the_example_file() -> None:
    text = (REPO / "etc" / "vna.example.toml").read_text()
    tomllib.loads(text)
    for key, _default, help_text in settings.describe():
        leaf = key.rsplit(".", 1)[-1]
        assert re.search(rf"^#?\s*{leaf}\s*=", text, re.M), (
            f"{key} is not documented in etc/vna.example.toml"
        )
        assert help_text, f"{key} has no help text"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[archive]\nrooot = 'x'\n", "archive.rooot: unknown key"),
        ("[ingest]\nworkers = 'two'\n", "ingest.workers: expected a whole number"),
        (
            "[ingest]\nduplicate_policy = 'overwrite'\n",
            "ingest.duplicate_policy: 'overwrite' is not one of",
        ),
        ("[[sources]]\ndrop = '/x'\n", "sources[0].name: required key is missing"),
        ("[[sources]]\nname = 'a/b'\ndrop = '/x'\n", "sources[0].name: 'a/b' must be"),
        (
            "[[sources]]\nname = 'a'\ndrop = '/x'\n[[sources]]\nname = 'a'\ndrop = '/y'\n",
            "sources[1].name: 'a' is configured twice",
        ),
        ("[[sources]]\nname = 'a'\ndrop = '/x'\nwatch = 'inotify'\n", "sources[0].watch"),
        (
            "[[sources]]\nname = 'a'\ndrop = '/x'\n[sources.coerce]\nset = { NotAKeyword = '1' }\n",
            "sources[0].coerce.set.NotAKeyword: not a DICOM keyword",
        ),
        (
            "[[sources]]\nname = 'a'\ndrop = '/x'\n[sources.coerce]\nremove = ['SOPInstanceUID']\n",
            "may not be coerced",
        ),
        ("[ingest]\nafter = 'move'\n", "ingest.processed: required"),
        ("[replicator]\nbackoff_max_seconds = 0\n", "replicator.backoff_max_seconds: must be"),
        ("[replicator]\nbatch_size = 0\n", "replicator.batch_size: must be at least 1"),
        ("[index\nurl = 1", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key_and_the_fault(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings.load(write(tmp_path, text))
    assert message in str(err.value)


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    p = write(tmp_path, "[index]\nurl = 'sqlite:///a.db'\n")
    s = settings.load(
        p, environ={"VNA_INDEX__URL": "postgresql+psycopg://h/db", "VNA_INGEST__WORKERS": "4"}
    )
    assert s.index.url == "postgresql+psycopg://h/db"
    assert s.ingest.workers == 4


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[archive]\nroot = 'arch'\n[index]\nurl = 'sqlite:///idx.db'\n")
    s = settings.load(p)
    assert s.archive.root == tmp_path / "arch"
    assert s.index.url == f"sqlite:///{tmp_path}/idx.db"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope\.toml: configuration file not found"):
        settings.load(tmp_path / "nope.toml")


def test_schema_head_constant_matches_the_migrations() -> None:
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from vna.index.engine import SCHEMA_HEAD, alembic_config

    script = ScriptDirectory.from_config(alembic_config(create_engine("sqlite://")))
    assert script.get_current_head() == SCHEMA_HEAD


def test_relative_file_target_resolves_against_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[[targets]]\nname = 'nfs'\nurl = 'file://replica'\n")
    assert settings.load(p).targets[0].url == f"file://{tmp_path}/replica"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("url = 'ftp://x/y'", "targets[0].url: 'ftp://x/y' must start with one of"),
        ("url = 'az://c/p'\nbandwidth = 'fast'", "targets[0].bandwidth: 'fast' is not a rate"),
        ("url = 'az://c/p'\nwindow = '* 25 * * *'", "targets[0].window:"),
        ("url = 'az://c/p'\nverify = 'trust'", "targets[0].verify: 'trust' is not one of"),
        (
            "url = 'az://c/p'\nmax_delete_share = 2.0",
            "targets[0].max_delete_share: must be between",
        ),
    ],
)
def test_bad_target_settings_are_named(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings.load(write(tmp_path, f"[[targets]]\nname = 't'\n{entry}\n"))
    assert message in str(err.value)
