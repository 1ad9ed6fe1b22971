"""Reading the files a user names, safely: regular files only, bounded reads, bounded YAML.

A config, sweep, plan or trace path may point at anything: a FIFO (opening it for reading
blocks until a writer comes), ``/dev/zero`` (endless), a directory, a multi-gigabyte file, or
YAML written to blow up (a "billion laughs" alias bomb expands to gigabytes, recursive anchors
never end, ten thousand nested brackets overflow the stack). Everything here fails on such
input quickly, in bounded memory, with a one-line :class:`~sim.errors.UserError` naming the
file (and line), instead of hanging, swapping or printing a traceback.

YAML rules on top of ``yaml.SafeLoader``: a mapping may not repeat a key (YAML says keys are
unique; PyYAML silently keeps the last one), the document may expand to at most
:data:`MAX_YAML_NODES` nodes counting every alias as a copy of what it names, anchors may not
refer to themselves, and nesting is at most :data:`MAX_YAML_DEPTH` deep.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sim.errors import ConfigError, UserError, clip, shown, shown_path

MAX_CONFIG_BYTES = 4 << 20  # a config, sweep or plan file (a sweep of 10,000 variants fits)
MAX_YAML_NODES = 200_000  # scalars, sequences and mappings, aliases expanded
MAX_YAML_DEPTH = 64  # nested sequences and mappings
_MERGE_TAG = "tag:yaml.org,2002:merge"


def open_regular(path: str | Path, error: type[UserError] = ConfigError) -> IO[bytes]:
    """Open a regular file for reading, or raise ``error`` naming what it is instead.

    The file is opened non-blocking first, so a FIFO without a writer is refused rather than
    waited on; a directory, device or socket is refused by its type.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{shown_path(path)}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{shown_path(path)}: cannot read: not a valid file name") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(mode)
                else "a FIFO (named pipe)"
                if stat.S_ISFIFO(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "not a regular file"
            )
            raise error(f"{shown_path(path)}: is {kind}; give a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | Path, limit: int, error: type[UserError] = ConfigError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (larger ones are refused)."""
    with open_regular(path, error) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(
            f"{shown_path(path)}: larger than {limit >> 20} MiB; this is not a config file "
            "(or split it)"
        )
    return data


class _Limits(Exception):
    """A YAML document broke one of the limits (message, line number or None)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` with duplicate keys refused and alias expansion and nesting bounded."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """Compose with a nesting bound (the composer recurses once per level)."""
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Limits(
                    f"nested more than {MAX_YAML_DEPTH} levels deep; flatten it", mark.line + 1
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        """The document's node graph, refused if it expands to too many nodes."""
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping whose keys are unique (merge keys ``<<`` may be overridden, as YAML says)."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _Limits(f"duplicate key {shown(key)} (first on line {first}); keep one", line)
            seen[key] = line
        return super().construct_mapping(node, deep)


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded (memoised per node, so a bomb is
    measured in time linear in its text); recursive anchors are refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, int]] = [(root, 0)]
    while stack:
        node, state = stack.pop()
        key = id(node)
        if state == 0:
            if key in sizes:
                continue
            if key in active:
                raise _Limits(
                    "an anchor refers to itself (a recursive alias); remove the cycle",
                    node.start_mark.line + 1,
                )
            active.add(key)
            stack.append((node, 1))
            for child in _children(node):
                if id(child) in active:
                    raise _Limits(
                        "an anchor refers to itself (a recursive alias); remove the cycle",
                        child.start_mark.line + 1,
                    )
                stack.append((child, 0))
        else:
            active.discard(key)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            if total > MAX_YAML_NODES:
                raise _Limits(
                    f"expands to more than {MAX_YAML_NODES:,} values (aliases count once per "
                    "use); this is not a config",
                    node.start_mark.line + 1,
                )
            sizes[key] = total
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str | bytes, source: str) -> Any:
    """Parse one YAML document with :class:`BoundedLoader`; every failure is one
    :class:`ConfigError` line, ``SOURCE: line N: ...``."""
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text)  # the reader checks the characters here already
        return loader.get_single_data()
    except _Limits as exc:
        at = f" line {exc.line}:" if exc.line else ""
        raise ConfigError(f"{source}:{at} {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:{_yaml_problem(exc)}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. a 10,000-digit integer
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source}: invalid YAML value: {shown(reason, 120)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` line N: invalid YAML: problem (context started on line M)`` from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    line = f" line {mark.line + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    ctx, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if ctx and cmark is not None and (mark is None or cmark.line != mark.line):
        problem += f" ({ctx} started on line {cmark.line + 1})"
    return f"{line} invalid YAML: {clip(problem, 200)}"


def read_yaml_file(path: Path) -> Any:
    """A YAML file (regular, at most :data:`MAX_CONFIG_BYTES`, UTF-8), parsed with limits."""
    data = read_bounded(path, MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{shown_path(path)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    return load_yaml(text, shown_path(path))
