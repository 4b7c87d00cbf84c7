"""Templates as code: sync twice creates nothing; export round-trips; a bad file syncs nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ccm.cli import app as cli
from ccm.db import Database
from tests.conftest import count_events

ROOT = Path(__file__).resolve().parents[2]


def ccm(database: Database, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"CCM_DATABASE_URL": database.url})


@pytest.fixture
def starter_copy(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def test_sync_twice_creates_nothing_the_second_time(database: Database, starter_copy: Path) -> None:
    first = ccm(database, "templates", "sync", str(starter_copy))
    assert first.exit_code == 0, first.output
    folders = [p for p in starter_copy.iterdir() if p.is_dir() and p.name != "workflows"]
    folders += list((starter_copy / "workflows").glob("*.yaml"))  # a workflow is kept as a template too
    assert f"{len(folders)} new draft(s), 0 template(s) unchanged" in first.output
    events = count_events(database)

    second = ccm(database, "templates", "sync", str(starter_copy))
    assert second.exit_code == 0
    assert f"0 new draft(s), {len(folders)} template(s) unchanged" in second.output
    assert count_events(database) == events


def test_a_changed_file_makes_one_new_draft(database: Database, starter_copy: Path) -> None:
    ccm(database, "templates", "sync", str(starter_copy))
    sms = starter_copy / "payment_reminder" / "sms.txt"
    sms.write_text(sms.read_text().replace("Need help?", "Struggling to pay?"))
    result = ccm(database, "templates", "sync", str(starter_copy))
    assert "new draft payment_reminder v2" in result.output
    assert "1 new draft(s)" in result.output


def test_export_then_sync_round_trips(database: Database, starter_copy: Path, tmp_path: Path) -> None:
    ccm(database, "templates", "sync", str(starter_copy))
    exported = tmp_path / "exported"
    for key in ("welcome", "annual_statement", "letter"):
        result = ccm(database, "templates", "export", key, str(exported))
        assert result.exit_code == 0, result.output
    assert (exported / "welcome" / "locales" / "fr" / "sms.txt").read_text() == (
        starter_copy / "welcome" / "locales" / "fr" / "sms.txt"
    ).read_text()
    again = ccm(database, "templates", "sync", str(exported))
    assert "0 new draft(s), 3 template(s) unchanged" in again.output


def test_a_bad_file_syncs_nothing_and_is_named(database: Database, starter_copy: Path) -> None:
    html = starter_copy / "claim_decision" / "email.html"
    html.write_text(html.read_text().replace("{% endif %}", "", 1))
    events = count_events(database)
    result = ccm(database, "templates", "sync", str(starter_copy))
    assert result.exit_code == 1
    assert "nothing was synced" in result.output
    assert f"{html}: line" in result.output
    assert count_events(database) == events  # not even the templates before it


def test_a_bad_template_yaml_is_named(database: Database, starter_copy: Path) -> None:
    (starter_copy / "welcome" / "template.yaml").write_text("name: [unclosed\n")
    result = ccm(database, "templates", "sync", str(starter_copy))
    assert result.exit_code == 1
    assert "welcome/template.yaml: not valid YAML" in result.output


def test_a_misspelled_part_file_is_named(database: Database, starter_copy: Path) -> None:
    (starter_copy / "payment_reminder" / "sms.text").write_text("Hello")
    result = ccm(database, "templates", "sync", str(starter_copy))
    assert result.exit_code == 1
    assert "sms.text: not a file ccm knows" in result.output


def test_a_byte_order_mark_is_not_content(database: Database, starter_copy: Path) -> None:
    sms = starter_copy / "one_time_passcode" / "sms.txt"
    sms.write_bytes(b"\xef\xbb\xbf" + sms.read_bytes())
    assert ccm(database, "templates", "sync", str(starter_copy)).exit_code == 0
    with database.read() as session:
        from ccm.templates_engine import service

        template = service.get_template(session, key="one_time_passcode")
        body = service.get_version(session, template=template, number=1).content["parts"]["sms"]["body"]
    assert not body.startswith("\ufeff")


def test_export_removes_files_the_version_does_not_have(
    database: Database, starter_copy: Path, tmp_path: Path
) -> None:
    ccm(database, "templates", "sync", str(starter_copy))
    exported = tmp_path / "exported"
    ccm(database, "templates", "export", "payment_reminder", str(exported))
    (exported / "payment_reminder" / "email.txt").write_text("stale text from an older export")
    ccm(database, "templates", "export", "payment_reminder", str(exported))
    assert not (exported / "payment_reminder" / "email.txt").exists()
    again = ccm(database, "templates", "sync", str(exported))
    assert "0 new draft(s), 1 template(s) unchanged" in again.output


def test_every_starter_template_round_trips(database: Database, starter_copy: Path, tmp_path: Path) -> None:
    ccm(database, "templates", "sync", str(starter_copy))
    exported = tmp_path / "all"
    keys = [p.name for p in starter_copy.iterdir() if p.is_dir() and p.name != "workflows"]
    keys += [p.stem for p in (starter_copy / "workflows").glob("*.yaml")]
    for key in keys:
        assert ccm(database, "templates", "export", key, str(exported)).exit_code == 0
    assert (
        f"0 new draft(s), {len(keys)} template(s) unchanged"
        in ccm(database, "templates", "sync", str(exported)).output
    )
