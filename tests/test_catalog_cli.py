"""`webhook-router catalog import|show`, run through the subcommand's own argparse wiring."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import pytest

from router.commands.catalog import register

SEED = Path(__file__).parent / "fixtures" / "scopes_v1.md"


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_CATALOG", raising=False)
    monkeypatch.delenv("ROUTER_CATALOG_OVERLAY", raising=False)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="webhook-router")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def shipped() -> dict[str, object]:
    text = resources.files("subscriptions.data").joinpath("catalog_v1.json").read_text("utf-8")
    return json.loads(text)


def test_import_prints_the_data_file_for_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("catalog", "import", str(SEED)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == "v1"
    assert data["scopes"] == shipped()["scopes"]
    assert data["aliases"] == {}


def test_import_output_is_indented_json(capsys: pytest.CaptureFixture[str]) -> None:
    run("catalog", "import", str(SEED))
    assert capsys.readouterr().out.startswith('{\n  "version": "v1",\n')


def test_import_records_the_given_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("catalog", "import", str(SEED), "--version", "v2") == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"


def test_import_of_missing_file_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("catalog", "import", str(tmp_path / "missing.md")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: cannot read ")
    assert captured.err.count("\n") == 1


def test_import_of_file_without_table_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prose = tmp_path / "prose.md"
    prose.write_text("no table here\n", encoding="utf-8")
    assert run("catalog", "import", str(prose)) == 2
    assert "no scope table" in capsys.readouterr().err


def test_show_prints_table_aliases_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("catalog", "show") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "33 scopes, 99 endpoints, 18 events"
    assert "  ConversationUnreadUpdate -> ConversationUnreadWebhook" in lines
    row = next(line for line in lines if line.startswith("locations.readonly "))
    assert row.split("  ")[0].strip() == "locations.readonly"
    assert "Sub-Account, Company" in row
    header = next(line for line in lines if line.startswith("SCOPE"))
    assert header.index("ACCESS") == row.index("Sub-Account, Company")


def test_show_json_prints_the_shipped_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("catalog", "show", "--json") == 0
    assert json.loads(capsys.readouterr().out) == shipped()


def test_show_uses_router_catalog_and_overlay_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"events": {"ContactUpdate": "contacts.readonly"}}), "utf-8")
    monkeypatch.setenv("ROUTER_CATALOG", str(SEED))
    monkeypatch.setenv("ROUTER_CATALOG_OVERLAY", str(overlay))
    assert run("catalog", "show", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == "scopes_v1"
    contacts = next(s for s in data["scopes"] if s["name"] == "contacts.readonly")
    assert "ContactUpdate" in contacts["events"]


def test_show_with_bad_overlay_is_one_error_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"events": {"ContactUpdate": "contacts.reed"}}), "utf-8")
    monkeypatch.setenv("ROUTER_CATALOG_OVERLAY", str(overlay))
    assert run("catalog", "show") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ROUTER_CATALOG_OVERLAY: ")
    assert err.count("\n") == 1


def test_catalog_without_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        run("catalog")
    assert raised.value.code == 2
