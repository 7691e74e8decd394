"""The merge of ListGraphs' sources (dago.history.listing.merge): whatever each source
returns per page (a full batch, a scan stopped early, runs in two sources), paging from
cursor to cursor lists every run once, newest first."""

from __future__ import annotations

import random

from dago.history.listing import Cursor, Listed, Part, merge
from dago.v1 import orchestrator_pb2


def listed(key: Cursor) -> Listed:
    return Listed(key, orchestrator_pb2.GraphSummary(graph_id=key[1]))


def part(keys: list[Cursor], after: Cursor | None, want: int, budget: int) -> Part:
    """What a source holding ``keys`` returns after ``after``: up to ``want`` runs, a scan
    stopping after ``budget`` entries (as a Redis shard's filtered scan does)."""
    later = sorted((k for k in keys if after is None or k < after), reverse=True)
    if len(later) > budget and budget < want:
        return Part([listed(k) for k in later[:budget]], later[budget - 1])
    taken = later[:want]
    return Part([listed(k) for k in taken], taken[-1] if len(taken) == want else None)


def pages(sources: list[list[Cursor]], size: int, budget: int) -> list[list[str]]:
    out: list[list[str]] = []
    after: Cursor | None = None
    while True:
        page = merge([part(s, after, size + 1, budget) for s in sources], size)
        assert len(page.runs) <= size
        out.append([s.graph_id for s in page.runs])
        if page.next is None:
            return out
        assert after is None or page.next < after  # every page moves on
        after = page.next


def test_every_run_once_in_order() -> None:
    rng = random.Random(23)
    for _ in range(200):
        keys = {(1000 + rng.randrange(30), f"{rng.randrange(4)}-{n:04d}") for n in range(40)}
        sources: list[list[Cursor]] = [[] for _ in range(4)]
        for k in keys:
            homes = rng.sample(range(4), rng.choice((1, 1, 2)))  # some in two stores
            for h in homes:
                sources[h].append(k)
        size, budget = rng.randrange(1, 8), rng.choice((2, 5, 1000))
        seen = [gid for page in pages(sources, size, budget) for gid in page]
        expected = [k[1] for k in sorted(keys, reverse=True)]
        assert seen == expected, (size, budget)


def test_empty_sources_end_at_once() -> None:
    assert pages([[], []], 5, 1000) == [[]]


def test_a_run_in_two_sources_is_listed_once() -> None:
    page = merge([Part([listed((5, "a"))], None), Part([listed((5, "a"))], None)], 10)
    assert [s.graph_id for s in page.runs] == ["a"] and page.next is None


def test_a_stopped_scan_cuts_the_page_at_its_frontier() -> None:
    # Source 1 stopped its scan at (7, "x"): runs of source 2 older than that wait.
    page = merge(
        [Part([listed((9, "a"))], (7, "x")), Part([listed((8, "b")), listed((3, "c"))], None)],
        10,
    )
    assert [s.graph_id for s in page.runs] == ["a", "b"] and page.next == (7, "x")
