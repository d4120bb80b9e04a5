"""Imports go one way: no import cycle between any two modules of the core or the adapters.

import-linter (``pyproject.toml``) checks the layers and the cycles between sibling packages; a
package whose ``__init__`` imports a module that imports the package back (as ``strategies`` and
``strategies.hybrid`` once did) escapes both, so this test looks for any cycle at all. Imports made
inside functions and under ``TYPE_CHECKING`` count.
"""

from __future__ import annotations

import grimp

PACKAGES = ("llmrerank", "langchain_llmrerank", "llamaindex_llmrerank")


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """Each cycle of ``graph`` once, written ``a -> b -> ... -> a`` from its smallest module name."""
    found = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is None:
                continue
            ring = [importer, *back[:-1]]
            start = ring.index(min(ring))
            ring = ring[start:] + ring[:start]
            found.add(" -> ".join([*ring, ring[0]]))
    return sorted(found)


def test_no_import_cycle_in_the_core_or_the_adapters() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (move what both sides need down a layer):\n" + "\n".join(cycles)


def test_a_cycle_is_found_and_named() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.low", "pkg.mid", "pkg.top"):
        graph.add_module(module)
    graph.add_import(importer="pkg.top", imported="pkg.mid")
    graph.add_import(importer="pkg.mid", imported="pkg.low")
    assert import_cycles(graph) == []
    graph.add_import(importer="pkg.low", imported="pkg.top")  # the lowest module reaches back up
    graph.add_import(importer="pkg.mid", imported="pkg")  # a module imports its own package
    graph.add_import(importer="pkg", imported="pkg.mid")
    assert import_cycles(graph) == ["pkg -> pkg.mid -> pkg", "pkg.low -> pkg.top -> pkg.mid -> pkg.low"]
