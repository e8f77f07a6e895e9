"""A small report document (headings, paragraphs, tables, figures, image galleries) rendered
as Markdown with its images beside it, and as one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.common.files import atomic_open, write_text


@dataclass(frozen=True)
class Image:
    name: str  # file name of the PNG beside the Markdown file
    png: bytes
    caption: str = ""


@dataclass
class Document:
    """Blocks in order: ``("h1" | "h2" | "p", text)``, ``("table", columns, rows)``,
    ``("image", Image)`` or ``("gallery", [Image, ...])``."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", columns, rows))

    def image(self, image: Image) -> None:
        self.blocks.append(("image", image))

    def gallery(self, images: list[Image]) -> None:
        self.blocks.append(("gallery", images))

    def images(self) -> list[Image]:
        out = []
        for block in self.blocks:
            if block[0] == "image":
                out.append(block[1])
            elif block[0] == "gallery":
                out += block[1]
        return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(document: Document, folder: str) -> str:
    """The document as Markdown; images are referenced as ``<folder>/<name>``."""
    lines = [f"# {document.title}", ""]
    for kind, *rest in document.blocks:
        if kind == "h2":
            lines += [f"## {rest[0]}", ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            columns, rows = rest
            lines.append("| " + " | ".join(_cell(c) for c in columns) + " |")
            lines.append("|" + "---|" * len(columns))
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "image":
            lines += [f"![{rest[0].caption}]({folder}/{rest[0].name})", ""]
        else:
            lines.append(" ".join(f"![{i.caption}]({folder}/{i.name} \"{i.caption}\")"
                                  for i in rest[0]))
            lines.append("")
    return "\n".join(lines)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


STYLE = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}
th{background:#f4f4f4}figure{display:inline-block;margin:.4em;text-align:center;
font-size:.8em;width:11em;vertical-align:top}figure img{image-rendering:pixelated;width:6em}
img.figure{max-width:100%}"""


def to_html(document: Document) -> str:
    """The document as one HTML file with every image inlined (it opens offline)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(document.title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(document.title)}</h1>"]
    for kind, *rest in document.blocks:
        if kind in ("h2", "p"):
            parts.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "table":
            columns, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
                         + "</tr>" + "".join("<tr>" + "".join(
                             f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                             for row in rows) + "</table>")
        elif kind == "image":
            parts.append(f"<p><img class='figure' src='{_data_uri(rest[0].png)}' "
                         f"alt='{html.escape(rest[0].caption, quote=True)}'></p>")
        else:
            parts.append("<div>" + "".join(
                f"<figure><img src='{_data_uri(i.png)}' alt='{html.escape(i.caption, True)}'>"
                f"<figcaption>{html.escape(i.caption)}</figcaption></figure>"
                for i in rest[0]) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(document: Document, markdown_path: Path, html_path: Path) -> list[Path]:
    """Write the Markdown file (its images in ``<name>_files/`` beside it) and the HTML file;
    return every file written."""
    folder = markdown_path.with_name(markdown_path.stem + "_files")
    folder.mkdir(parents=True, exist_ok=True)
    images = document.images()
    for stale in set(folder.glob("*.png")) - {folder / image.name for image in images}:
        stale.unlink()  # an earlier report's figures
    written = []
    for image in images:
        with atomic_open(folder / image.name, "wb") as handle:
            handle.write(image.png)
        written.append(folder / image.name)
    write_text(markdown_path, markdown(document, folder.name))
    write_text(html_path, to_html(document))
    return [markdown_path, html_path, *written]
