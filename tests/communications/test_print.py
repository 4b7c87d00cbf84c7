"""Letters read back from real PDFs: the customer's name, the address inside the envelope window, PDF/A
when asked; print batches whose pages and sheets match their manifest, handed and confirmed."""

from __future__ import annotations

import csv
import io
import re
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import select
from typer.testing import CliRunner

from ccm.auth.models import Role
from ccm.channels import Channel
from ccm.channels.print import WINDOWS, AddressPlacementError, render_pdf
from ccm.cli import app as cli
from ccm.communications.delivery import artifact_store
from ccm.communications.status import DeliveryStatus
from ccm.config import Settings
from ccm.customers.models import Customer
from ccm.db import Database
from tests.communications.conftest import Sender, sample
from tests.conftest import count_events

POINTS_PER_MM = 72 / 25.4


def words_on_first_page(pdf: bytes) -> list[tuple[str, float, float, float, float]]:
    """(word, left, top, right, bottom) in millimetres, as poppler's pdftotext lays them out."""
    html = subprocess.run(
        ["pdftotext", "-bbox", "-f", "1", "-l", "1", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode()
    found = re.findall(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', html
    )
    return [
        (
            word,
            float(x0) / POINTS_PER_MM,
            float(y0) / POINTS_PER_MM,
            float(x1) / POINTS_PER_MM,
            float(y1) / POINTS_PER_MM,
        )
        for x0, y0, x1, y1, word in found
    ]


def page_text(pdf: bytes, page: int) -> str:
    return subprocess.run(
        ["pdftotext", "-f", str(page), "-l", str(page), "-layout", "-", "-"],
        input=pdf,
        capture_output=True,
        check=True,
    ).stdout.decode()


def test_the_address_lies_inside_the_envelope_window(sender: Sender) -> None:
    delivery = sender.send("claim_decision", "CUST-1001", sample("claim_decision"), [Channel.print])
    pdf = artifact_store(sender.settings).get(delivery.artifact_sha256 or "")
    words = words_on_first_page(pdf)
    window = WINDOWS["A4"]
    # The first time each of these words appears on the page is in the address; "Dear Amelia" comes later.
    address = {}
    for word in sorted(words, key=lambda w: -w[2]):
        if word[0] in {"Amelia", "Hartley", "London", "EC1R", "4SX"}:
            address[word[0]] = word
    assert set(address) == {"Amelia", "Hartley", "London", "EC1R", "4SX"}
    for _, left, top, right, bottom in address.values():
        assert window.left <= left
        assert right <= window.left + window.width
        assert window.top <= top
        assert bottom <= window.top + window.height
    [dear] = [w for w in words if w[0] == "Dear"]
    assert dear[2] > window.top + window.height  # the body of the letter starts below the window


def test_an_address_outside_the_window_or_missing_is_refused() -> None:
    letterhead = (
        "<div style='position: relative; height: 100mm'>"
        "<div style='position: absolute; top: {top}; left: 20mm; width: 85mm'>{block}</div></div>"
    )
    css = "@page { margin: 0 }"
    inside = letterhead.format(
        top="50mm", block="<div class='recipient'>Ann Smith<br>1 High St<br>Leeds LS1 1AA</div>"
    )
    assert render_pdf(inside, css=css, check_window=True).pages == 1

    too_high = letterhead.format(top="20mm", block="<div class='recipient'>Ann Smith<br>1 High St</div>")
    with pytest.raises(AddressPlacementError, match="does not fit inside the DL/C5"):
        render_pdf(too_high, css=css, check_window=True)
    with pytest.raises(AddressPlacementError, match="no address block"):
        render_pdf(letterhead.format(top="50mm", block="Ann Smith"), css=css, check_window=True)
    nested = (
        "<div class='recipient'><p style='margin: 0'>Ann Smith</p><p style='margin: 0'>{second}</p></div>"
    )
    assert render_pdf(
        letterhead.format(top="50mm", block=nested.format(second="Leeds")), css=css, check_window=True
    )
    strays = nested.format(second="<span style='position: relative; top: 120mm'>Leeds</span>")
    with pytest.raises(AddressPlacementError, match="does not fit"):
        render_pdf(letterhead.format(top="50mm", block=strays), css=css, check_window=True)
    # A template's own @page rule cannot make pages of another size than the letter is printed on.
    with pytest.raises(AddressPlacementError, match="page 1 is 148 x 210 mm, not A4"):
        render_pdf(inside, css="@page { size: A5; margin: 0 }", check_window=True)


def test_pdf_a_and_document_metadata_when_asked(sender: Sender) -> None:
    archival = Settings(
        **{**sender.settings.model_dump(), "print_pdf_variant": "pdf/a-3b", "print_author": "Northwind Bank"}
    )
    sender.deliverer.adapters[Channel.print].settings = archival  # type: ignore[attr-defined]
    delivery = sender.send("claim_decision", "CUST-1001", sample("claim_decision"), [Channel.print])
    reader = PdfReader(io.BytesIO(artifact_store(sender.settings).get(delivery.artifact_sha256 or "")))
    xmp = reader.xmp_metadata
    assert xmp is not None
    assert (xmp.pdfaid_part, xmp.pdfaid_conformance) == ("3", "B")
    info = reader.metadata
    assert info is not None
    assert info.title == "Claim decision"
    assert info.author == "Northwind Bank"
    assert info.creation_date is not None


def make_letters(sender: Sender) -> list[str]:
    letters = [
        ("claim_decision", "CUST-1006"),  # FR 69002
        ("annual_statement", "CUST-1001"),  # GB EC1R 4SX, several pages
        ("claim_decision", "CUST-1002"),  # CA H3H 1G5
        ("claim_decision", "CUST-1005"),  # GB EH2 3AH
    ]
    ids = []
    for template, customer in letters:
        delivery = sender.send(template, customer, sample(template), [Channel.print])
        assert delivery.status == DeliveryStatus.queued, delivery.last_error
        ids.append(delivery.id)
    return ids


def test_a_print_batch_matches_its_manifest_and_moves_its_letters(
    client: TestClient, sender: Sender, role_keys: dict[Role, dict[str, str]], database: Database
) -> None:
    with database.transaction() as session:  # a name a spreadsheet would run as a formula
        session.scalars(
            select(Customer).where(Customer.external_id == "CUST-1005")
        ).one().name = "=HYPERLINK(1)"
    ids = make_letters(sender)
    operator = role_keys[Role.sender]

    created = client.post("/v1/print-batches", json={}, headers=operator)
    assert created.status_code == 201, created.text
    batch = created.json()
    assert (batch["status"], batch["letters"]) == ("created", 4)

    pdf = client.get(f"/v1/print-batches/{batch['id']}/pdf", headers=operator).content
    manifest = list(
        csv.DictReader(
            io.StringIO(client.get(f"/v1/print-batches/{batch['id']}/manifest", headers=operator).text)
        )
    )
    pages = len(PdfReader(io.BytesIO(pdf)).pages)

    assert [row["customer"] for row in manifest] == ["CUST-1002", "CUST-1006", "CUST-1001", "CUST-1005"]
    assert sorted(row["delivery_id"] for row in manifest) == sorted(ids)
    assert sum(int(row["sheets"]) for row in manifest) == batch["sheets"]
    assert pages == batch["pages"] == 2 * batch["sheets"]
    assert manifest[3]["name"] == "'=HYPERLINK(1)"
    names = {"CUST-1002": "Tremblay", "CUST-1006": "Moreau", "CUST-1001": "Hartley", "CUST-1005": "HYPERLINK"}
    for row in manifest:
        first, count = int(row["first_page"]), int(row["pages"])
        assert int(row["sheets"]) == (count + 1) // 2
        assert names[row["customer"]] in page_text(pdf, first)  # each letter starts where the manifest says
        if count % 2:
            assert page_text(pdf, first + count).strip() == ""  # and the back of its last sheet is blank
    assert any(int(row["pages"]) > 1 for row in manifest)

    assert (
        client.post("/v1/print-batches", json={}, headers=operator).json()["type"]
        == "urn:ccm:problem:nothing-to-print"
    )
    assert client.post(f"/v1/print-batches/{batch['id']}/confirmed", headers=operator).status_code == 409

    handed = client.post(f"/v1/print-batches/{batch['id']}/handed", headers=operator)
    assert handed.json()["status"] == "handed"
    assert {sender.delivery(i).status for i in ids} == {DeliveryStatus.sent}
    confirmed = client.post(f"/v1/print-batches/{batch['id']}/confirmed", headers=operator)
    assert confirmed.json()["status"] == "confirmed"
    assert client.post(f"/v1/print-batches/{batch['id']}/confirmed", headers=operator).status_code == 200
    assert {sender.delivery(i).status for i in ids} == {DeliveryStatus.delivered}
    assert count_events(database, "delivery.delivered") == 4
    assert count_events(database, "print_batch.confirmed") == 1


def test_ccm_print_batch_writes_the_pdf_and_manifest(
    sender: Sender, database: Database, tmp_path: Path
) -> None:
    make_letters(sender)
    env = {"CCM_DATABASE_URL": database.url, "CCM_DATA_DIR": str(sender.settings.data_dir)}
    result = CliRunner().invoke(cli, ["print", "batch", "--out", str(tmp_path / "out")], env=env)
    assert result.exit_code == 0, result.output
    [pdf] = (tmp_path / "out").glob("*.pdf")
    [manifest] = (tmp_path / "out").glob("*.csv")
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    assert len(PdfReader(pdf).pages) == 2 * sum(int(r["sheets"]) for r in rows)
    batch_id = pdf.stem.removeprefix("print-batch-")
    assert f"ccm print handed {batch_id}" in result.output

    handed = CliRunner().invoke(cli, ["print", "handed", batch_id], env=env)
    assert handed.exit_code == 0, handed.output
    again = CliRunner().invoke(cli, ["print", "batch", "--out", str(tmp_path / "out")], env=env)
    assert "no A4 letters are waiting" in again.output
    assert CliRunner().invoke(cli, ["print", "confirmed", "not-a-batch"], env=env).exit_code == 1
