"""A griffe extension: the package's reST docstrings as Markdown, and its public names marked.

Loaded by mkdocstrings (``extensions:`` in mkdocs.yml). Once griffe has loaded ``pyro_blr``:

- every object's docstring text goes through :func:`rst_markdown.rst_to_markdown`, with
  cross-referenced names resolved in the scope of the object whose docstring names them
  (``:class:`Target``` in ``pyro_blr.core`` means ``pyro_blr.core.target.Target``), to the
  canonical path mkdocstrings registers for every object it renders;
- every object defined at module level is marked public exactly when the package or one of its
  subpackages exports it (``__all__`` of an ``__init__.py``), and every name a plain module
  imports is marked private: with ``filters: public`` the API pages list those names and no
  module internals (tuning constants such as ``MAX_STEP_BACKS``, helpers, re-imports), while each
  module's docstring still explains its part. A page can still name other members explicitly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import griffe

sys.path.insert(0, str(Path(__file__).parent))
from rst_markdown import rst_to_markdown

__all__ = ["RstToMarkdown", "exported_paths", "scoped_resolver"]


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (aliases, i.e. imports, are skipped)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


def _canonical(path: str, collection: griffe.ModulesCollection) -> str:
    """The path of the object that ``path`` finally names (an alias's target), else ``path``."""
    try:
        return collection[path].canonical_path
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return path


def scoped_resolver(obj: griffe.Object, collection: griffe.ModulesCollection) -> Callable:
    """A ``resolve(name) -> identifier | None`` for names written in ``obj``'s docstring.

    A name is looked up as Python would from ``obj``'s scope (its members, its module's names and
    imports), then as an absolute path; ``ExpFamily.initial_params`` resolves its first part.
    """
    scopes = [obj] if obj.is_module or obj.is_class else []
    scopes.append(obj.parent if obj.parent is not None else obj)

    def resolve(name: str) -> str | None:
        head, dot, rest = name.partition(".")
        for scope in scopes:
            try:
                return _canonical(scope.resolve(head) + dot + rest, collection)
            except (griffe.NameResolutionError, griffe.AliasResolutionError):
                continue
        return _canonical(name, collection) if "." in name else None

    return resolve


def exported_paths(pkg: griffe.Module) -> set[str]:
    """Canonical paths of the names that ``pkg`` and its subpackages list in ``__all__``."""
    exported = set()
    for obj in _objects(pkg):
        if obj.is_module and obj.is_init_module and obj.exports:
            for name in obj.exports:
                member = obj.members.get(str(name))
                if member is None:
                    continue
                try:
                    exported.add(member.canonical_path)
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue
    return exported


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring from reST markup to Markdown; mark the exported names public."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        exported = exported_paths(pkg)
        for obj in _objects(pkg):
            if obj.docstring is not None:
                resolve = scoped_resolver(obj, loader.modules_collection)
                obj.docstring.value = rst_to_markdown(obj.docstring.value, resolve)
            if obj.is_module:
                for member in obj.members.values():
                    if not member.is_alias and not member.is_module:
                        member.public = member.path in exported
                    elif member.is_alias and not obj.is_init_module:
                        member.public = False  # an import; a package's __all__ decides its own
