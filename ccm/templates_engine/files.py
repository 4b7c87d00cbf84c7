"""Templates as code: the folder format under templates/, read by `ccm templates sync`, written by export.

    templates/
      <key>/
        template.yaml          name, description, kind, category, default_locale, schema, sample_data,
                               notes, and print: {page_size: A4|Letter}
        email.subject.txt  email.html  email.txt  sms.txt  print.html  print.css  portal.title.txt
        portal.html
        body.html              the source of a layout or snippet
        locales/<locale>/      the same part files, translated
      workflows/
        <key>.yaml             a workflow: name, description, notes, rules, default (docs/workflows.md)

Each file's one trailing newline is not part of the content. See templates/README.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ccm.errors import InvalidInput
from ccm.templates_engine.models import Category, TemplateKind
from ccm.templates_engine.schemas import TemplateCreate, VersionBody

METADATA_FILE = "template.yaml"
WORKFLOWS_FOLDER = "workflows"
SKIPPED_FOLDERS = {WORKFLOWS_FOLDER}
PART_FILES: dict[tuple[str, str], str] = {
    ("email", "subject"): "email.subject.txt",
    ("email", "html"): "email.html",
    ("email", "text"): "email.txt",
    ("sms", "body"): "sms.txt",
    ("print", "html"): "print.html",
    ("print", "css"): "print.css",
    ("portal", "title"): "portal.title.txt",
    ("portal", "html"): "portal.html",
}
BODY_FILE = "body.html"
_METADATA_KEYS = {
    "name",
    "description",
    "kind",
    "category",
    "default_locale",
    "schema",
    "sample_data",
    "notes",
    "print",
}


class FolderError(Exception):
    """A template folder cannot be read; the message names the file."""


@dataclass
class TemplateFolder:
    path: Path
    template: TemplateCreate
    body: VersionBody
    extra: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> str:
    # utf-8-sig drops a byte-order mark some editors add: it would otherwise make an SMS UCS-2.
    text = path.read_text(encoding="utf-8-sig")
    return text[:-1] if text.endswith("\n") else text


_KNOWN_FILES = {*PART_FILES.values(), BODY_FILE}


def _check_files(folder: Path, *, top: bool) -> None:
    """A misspelled part file (`sms.text`) must not be silently ignored."""
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not (top and path.name == "locales"):
                raise FolderError(f"{path}: unexpected folder (translations go in locales/<locale>/)")
            continue
        if path.name not in _KNOWN_FILES and not (top and path.name in (METADATA_FILE, "README.md")):
            expected = ", ".join(sorted(_KNOWN_FILES))
            raise FolderError(f"{path}: not a file ccm knows (part files are {expected})")


def _read_parts(folder: Path, page_size: str | None) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    for (channel, name), filename in PART_FILES.items():
        file = folder / filename
        if file.is_file():
            parts.setdefault(channel, {})[name] = _read(file)
    if "print" in parts and page_size:
        parts["print"]["page_size"] = page_size
    if (folder / BODY_FILE).is_file():
        parts["body"] = _read(folder / BODY_FILE)
    return parts


def read_folder(folder: Path) -> TemplateFolder:
    metadata_path = folder / METADATA_FILE
    try:
        metadata = yaml.safe_load(metadata_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FolderError(f"{metadata_path}: missing (every template folder has one)") from None
    except yaml.YAMLError as exc:
        raise FolderError(f"{metadata_path}: not valid YAML: {exc}") from None
    if not isinstance(metadata, dict):
        raise FolderError(f"{metadata_path}: expected a mapping of name: value")
    unknown = set(metadata) - _METADATA_KEYS - {"key"}
    if unknown:
        raise FolderError(f"{metadata_path}: unknown field(s) {', '.join(sorted(unknown))}")
    key = str(metadata.get("key", folder.name))
    if key != folder.name:
        raise FolderError(f"{metadata_path}: key '{key}' differs from the folder name '{folder.name}'")
    _check_files(folder, top=True)
    page_size = (metadata.get("print") or {}).get("page_size")
    try:
        template = TemplateCreate(
            key=key,
            name=metadata.get("name", key),
            description=metadata.get("description", "") or "",
            kind=metadata.get("kind", TemplateKind.communication),
            category=metadata.get("category", Category.service),
            default_locale=metadata.get("default_locale", "en"),
        )
    except ValidationError as exc:
        raise FolderError(f"{metadata_path}: {_describe(exc)}") from None
    locales: dict[str, Any] = {}
    locales_dir = folder / "locales"
    if locales_dir.is_dir():
        for locale_dir in sorted(p for p in locales_dir.iterdir() if p.is_dir()):
            _check_files(locale_dir, top=False)
            locales[locale_dir.name] = _read_parts(locale_dir, page_size)
    content = {
        "parts": _read_parts(folder, page_size),
        "locales": locales,
        "schema": metadata.get("schema"),
        "sample_data": metadata.get("sample_data") or {},
        "notes": metadata.get("notes") or "",
    }
    if content["schema"] is None:
        del content["schema"]
    try:
        body = VersionBody.model_validate(content)
    except ValidationError as exc:
        raise FolderError(f"{folder}: {_describe(exc)}") from None
    return TemplateFolder(path=folder, template=template, body=body)


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


_WORKFLOW_KEYS = {"name", "description", "notes", "rules", "default"}


def read_workflow(path: Path) -> TemplateFolder:
    """One workflow file, templates/workflows/<key>.yaml: kept as a template of kind workflow."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise FolderError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise FolderError(f"{path}: expected a mapping with rules and a default")
    unknown = set(document) - _WORKFLOW_KEYS
    if unknown:
        raise FolderError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    key = path.stem
    try:
        template = TemplateCreate(
            key=key,
            name=document.get("name", key),
            description=document.get("description", "") or "",
            kind=TemplateKind.workflow,
        )
        body = VersionBody.model_validate(
            {
                "workflow": {"rules": document.get("rules") or [], "default": document.get("default")},
                "notes": document.get("notes") or "",
            }
        )
    except ValidationError as exc:
        raise FolderError(f"{path}: {_describe(exc)}") from None
    return TemplateFolder(path=path, template=template, body=body)


def read_tree(root: Path) -> list[TemplateFolder]:
    """Every template folder under `root`, layouts and snippets first (communications use them), and the
    workflows in root/workflows/ last."""
    if not root.is_dir():
        raise FolderError(f"{root}: not a folder")
    folders = [
        read_folder(p)
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name not in SKIPPED_FOLDERS and not p.name.startswith(".")
    ]
    workflows = root / WORKFLOWS_FOLDER
    if workflows.is_dir():
        for path in sorted(workflows.iterdir()):
            if path.name.startswith(".") or path.name == "README.md":
                continue
            if path.suffix not in (".yaml", ".yml") or not path.is_file():
                raise FolderError(f"{path}: not a workflow file (<key>.yaml)")
            folders.append(read_workflow(path))
    order = {
        TemplateKind.layout: 0,
        TemplateKind.snippet: 1,
        TemplateKind.communication: 2,
        TemplateKind.workflow: 3,
    }
    return sorted(folders, key=lambda f: (order[f.template.kind], f.template.key))


def file_for(folder: Path, pointer: str) -> Path:
    """The file a JSON pointer into a version body comes from: /locales/fr/sms/body -> locales/fr/sms.txt."""
    if folder.is_file():  # a workflow file
        return folder
    pieces = pointer.strip("/").split("/")
    base = folder
    if pieces[:1] == ["locales"] and len(pieces) >= 2:
        base = folder / "locales" / pieces[1]
        pieces = pieces[2:]
    elif pieces[:1] == ["parts"]:
        pieces = pieces[1:]
    else:
        return folder / METADATA_FILE
    if pieces == ["body"]:
        return base / BODY_FILE
    if len(pieces) >= 2 and (pieces[0], pieces[1]) in PART_FILES:
        return base / PART_FILES[(pieces[0], pieces[1])]
    return base


def describe_invalid(folder: Path, error: InvalidInput) -> list[str]:
    return [f"{file_for(folder, e.path)}: {e.message}" for e in error.errors]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def _write_parts(folder: Path, parts: dict[str, Any]) -> None:
    for (channel, name), filename in PART_FILES.items():
        value = (parts.get(channel) or {}).get(name)
        if value is not None:
            _write(folder / filename, str(value))
    if parts.get("body") is not None:
        _write(folder / BODY_FILE, str(parts["body"]))


def write_workflow(target: Path, *, template: dict[str, Any], content: dict[str, Any]) -> None:
    """Write a workflow version as templates/workflows/<key>.yaml (what read_workflow reads back)."""
    document: dict[str, Any] = {"name": template["name"]}
    if template.get("description"):
        document["description"] = template["description"]
    if content.get("notes"):
        document["notes"] = content["notes"]
    document.update(content.get("workflow") or {})
    _write(target, yaml.safe_dump(document, sort_keys=False, allow_unicode=True).rstrip("\n"))


def write_folder(target: Path, *, template: dict[str, Any], content: dict[str, Any]) -> None:
    """Write a template and one version's content in the folder format (what read_folder reads back).
    Files ccm owns that this version lacks are removed, so that an older export leaves nothing behind."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (*_KNOWN_FILES, METADATA_FILE):
        (target / name).unlink(missing_ok=True)
    if (target / "locales").is_dir():
        shutil.rmtree(target / "locales")
    metadata: dict[str, Any] = {
        "name": template["name"],
        "description": template["description"],
        "kind": template["kind"],
        "category": template["category"],
        "default_locale": template["default_locale"],
    }
    page_size = (content.get("parts", {}).get("print") or {}).get("page_size")
    if page_size:
        metadata["print"] = {"page_size": page_size}
    for name in ("schema", "sample_data", "notes"):
        if name in content and (content[name] or name == "schema"):
            metadata[name] = content[name]
    _write(target / METADATA_FILE, yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip("\n"))
    _write_parts(target, content.get("parts", {}))
    for locale, parts in content.get("locales", {}).items():
        _write_parts(target / "locales" / locale, parts)
