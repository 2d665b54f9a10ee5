"""S3's XML bodies: a small writer for the answers and a guarded parser for request bodies.

Writing: :func:`document` renders a tree of :class:`E` (name, text or children) as S3 does,
with the ``http://s3.amazonaws.com/doc/2006-03-01/`` namespace on the root and nothing else
(no pretty-printing). Text is escaped for XML 1.0; characters XML 1.0 cannot carry at all
(control characters other than tab, CR and LF) are written as character references, as S3
writes them: a client that lists such keys should ask for ``encoding-type=url``.

Parsing: :func:`parse` takes a request body (``DeleteObjects``, ``CompleteMultipartUpload``,
``CreateBucketConfiguration``), refuses document type declarations and entities (no entity
expansion, no external references, whatever the parser's version), strips namespaces from
element names and raises ``MalformedXML`` for anything else that is wrong, as S3 does.

Pure; any shard.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cachedaemon.server.s3.errors import S3Error

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
HEADER = b'<?xml version="1.0" encoding="UTF-8"?>\n'

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_NEEDS_ESCAPE = re.compile(r'[&<>"\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    return _ESCAPES.get(c) or f"&#x{ord(c):x};"


def escape(text: str) -> str:
    """``text`` as XML character data."""
    return _NEEDS_ESCAPE.sub(_escape_char, text) if _NEEDS_ESCAPE.search(text) else text


@dataclass(frozen=True, slots=True)
class E:
    """One element: ``E("Key", "a/b")`` or ``E("Contents", [E(...), ...])``."""

    name: str
    body: str | Sequence[E] | None = None


def _render(el: E, out: list[str]) -> None:
    body = el.body
    if body is None:
        out.append(f"<{el.name}/>")
    elif isinstance(body, str):
        out.append(f"<{el.name}>{escape(body)}</{el.name}>")
    else:
        out.append(f"<{el.name}>")
        for child in body:
            _render(child, out)
        out.append(f"</{el.name}>")


def document(root: str, children: Iterable[E], *, namespace: bool = True) -> bytes:
    """The bytes of ``<root xmlns=...>children</root>`` with the XML declaration."""
    out = [f'<{root} xmlns="{S3_NAMESPACE}">' if namespace else f"<{root}>"]
    for child in children:
        _render(child, out)
    out.append(f"</{root}>")
    return HEADER + "".join(out).encode("utf-8")


# --- parsing ---------------------------------------------------------------------------------

_DECLARATIONS = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed element: its local name, its text (stripped) and its children."""

    name: str
    text: str
    children: tuple[Node, ...]

    def find(self, name: str) -> Node | None:
        for child in self.children:
            if child.name == name:
                return child
        return None

    def findall(self, name: str) -> list[Node]:
        return [c for c in self.children if c.name == name]

    def text_of(self, name: str) -> str | None:
        child = self.find(name)
        return None if child is None else child.text


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _convert(el: ET.Element) -> Node:
    return Node(_local(el.tag), (el.text or "").strip(), tuple(_convert(c) for c in el))


def parse(body: bytes, root: str) -> Node:
    """The document ``body`` whose root element must be ``root`` (``MalformedXML`` else)."""
    if not body.strip():
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      "validate against our published schema (empty body)")
    if _DECLARATIONS.search(body):
        raise S3Error("MalformedXML", "Document type declarations and entities are not allowed")
    try:
        el = ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error("MalformedXML", f"The XML you provided was not well-formed: {exc}") \
            from None
    node = _convert(el)
    if node.name != root:
        raise S3Error("MalformedXML", f"expected a <{root}> document, got <{node.name}>")
    return node
