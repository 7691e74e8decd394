"""The operators' console (web/console.html, served by Envoy on /console/) in a real headless
Chromium driven by Playwright, in front of real API and worker processes: the runs list
(paged, filtered, live), a run's story (graph with node states and taken / untaken edges
routed around the boxes, timeline bars per attempt, node panel, the run's error, cancel,
fork with a preview of its plan, forked-from and reused nodes, a map's progress bar and
paged items by state, child runs linked both ways, a paused run resumed by raising its
limits), the operations page (workers, model rate limits, a dead letter requeued), the
usage page (with and without run history in PostgreSQL), the Definitions page (publish
from a file or a drop, unchanged and refused publishes, label, deprecate, a version's graph
and JSON, run a version with inputs), a 500-node run's frame times (printed) and the API
key. Screenshots are kept in .artifacts/console-*.png."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from google.protobuf import json_format
from playwright.async_api import Browser, Page, async_playwright

from dago.api.auth import hash_key, new_key
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from dago_client import AsyncDagoClient
from fake_anthropic import FakeAnthropic, Text, Usage
from harness import (
    ROOT,
    ProcessStack,
    child_logs,
    echo,
    edge,
    envoy_config,
    eventually,
    fast_retry,
    knob,
    port_open,
    request,
    start_api_quickly,
    start_envoy,
    tool,
)
from obshelpers import TOOLS, marker, poison
from redisfixture import RedisServer

# Chromium on the page Envoy serves, in front of API and worker processes.
pytestmark = [pytest.mark.edge, pytest.mark.process]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / ".artifacts"
ROUTER = json.loads((ROOT / "examples" / "router.json").read_text())


@dataclass
class Console:
    """A stack with Envoy serving the console, a browser and a client of the API."""

    stack: ProcessStack
    port: int
    browser: Browser
    dago: AsyncDagoClient

    def url(self, route: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/console/{route}"


def check_prerequisites() -> None:
    for built in ("console.html", "dist/console.js"):
        assert (ROOT / "web" / built).exists(), f"web/{built} is missing: `make web` builds it"
    assert CHROMIUM.exists(), "Debian chromium is needed: apt-get install -y chromium"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    check_prerequisites()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            await b.close()


@contextlib.asynccontextmanager
async def serving(
    redis_url: str, browser: Browser, workers: int = 1, key: str = "", **env: str
) -> AsyncIterator[Console]:
    """API + ``workers`` workers + Envoy serving the console (``env``: their settings)."""
    stack = ProcessStack(redis_url, f"tcon{secrets.token_hex(3)}", **env)
    config, port = envoy_config(stack, web_root=str(ROOT / "web"))
    envoy = start_envoy(config, stack.logs / "envoy.log")
    try:
        for n in range(workers):
            stack.start(f"w{n + 1}", "worker")
        await start_api_quickly(stack)
        await port_open(port)
        async with AsyncDagoClient(f"127.0.0.1:{stack.port}", api_key=key or None) as dago:
            yield Console(stack, port, browser, dago)
    finally:
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
        await stack.close()


@pytest.fixture(scope="module")
async def console(redis_single: RedisServer, browser: Browser) -> AsyncIterator[Console]:
    async with serving(redis_single.url, browser) as c:
        yield c


async def open_page(c: Console, route: str) -> Page:
    page = await c.browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(c.url(route))
    return page


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def attrs(page: Page, selector: str, key: str, value: str) -> dict[str, str]:
    """{element's `key` attribute: its `value` attribute} of every element matching."""
    return await page.eval_on_selector_all(
        selector,
        f"els => Object.fromEntries(els.map(e => [e.getAttribute('{key}'), "
        f"e.getAttribute('{value}')]))",
    )


async def edges_crossing_boxes(page: Page) -> list[str]:
    """The drawn edges with a segment through a node box other than their own ends."""
    return await page.evaluate(
        """() => {
          const boxes = [...document.querySelectorAll('#graph [data-node]')].map(g => {
            const m = /translate\\(([-\\d.]+),([-\\d.]+)\\)/.exec(g.getAttribute('transform'));
            const r = g.querySelector('rect');
            return { id: g.dataset.node, x: +m[1], y: +m[2], w: +r.getAttribute('width'),
                     h: +r.getAttribute('height') };
          });
          const bad = [];
          for (const e of document.querySelectorAll('#graph [data-edge]')) {
            const [from, to] = e.dataset.edge.split('->');
            const n = e.querySelector('path').getAttribute('d').match(/-?[\\d.]+/g).map(Number);
            for (let i = 0; i + 3 < n.length; i += 2) {
              const [x1, y1, x2, y2] = n.slice(i, i + 4);
              for (const b of boxes) {
                if (b.id === from || b.id === to) continue;
                const inX = Math.max(x1, x2) > b.x + 1 && Math.min(x1, x2) < b.x + b.w - 1;
                const inY = Math.max(y1, y2) > b.y + 1 && Math.min(y1, y2) < b.y + b.h - 1;
                if (inX && inY) bad.push(`${e.dataset.edge} crosses ${b.id}`);
              }
            }
          }
          return bad;
        }"""
    )


async def test_the_runs_list_pages_filters_and_updates_live(console: Console) -> None:
    name = f"listed-{secrets.token_hex(2)}"
    gids = []
    for i in range(3):
        req = request([echo("a", i=i)], name=name)
        gids.append((await console.dago.submit(req)).graph_id)
    page = await open_page(console, "#/runs?size=2")
    try:
        await page.wait_for_selector(f'tr[data-run="{gids[2]}"]')
        rows = await page.eval_on_selector_all(
            "#runs-body tr[data-run]", "r => r.map(e => e.dataset.run)"
        )
        assert rows == [gids[2], gids[1]]  # newest first, two per page
        assert await page.is_disabled("#newer") and not await page.is_disabled("#older")
        await page.click("#older")
        await page.wait_for_selector(f'tr[data-run="{gids[0]}"]')
        assert await page.inner_text("#page-no") == "page 2"
        assert await page.is_disabled("#older")
        await page.click("#newer")
        await page.wait_for_selector(f'tr[data-run="{gids[2]}"]')
        # A run submitted now shows up without a reload (the list refreshes itself).
        fresh = (await console.dago.submit(request([echo("a")], name="fresh-one"))).graph_id
        await page.wait_for_selector(f'tr[data-run="{fresh}"]', timeout=10_000)
        await page.wait_for_selector(
            f'tr[data-run="{fresh}"] [data-state="completed"]', timeout=10_000
        )
        # The filters ask the server: state, then the exact name.
        await page.select_option("#f-state", label="failed")
        await page.wait_for_selector("#runs-body td.empty")
        assert "state=failed" in page.url
        await page.select_option("#f-state", label="completed")
        await page.fill("#f-name", "fresh-one")
        await page.press("#f-name", "Enter")
        await page.wait_for_function(
            "document.querySelectorAll('#runs-body tr[data-run]').length === 1"
        )
        assert await page.get_attribute("#runs-body tr[data-run]", "data-run") == fresh
        assert "name=fresh-one" in page.url
        await page.fill("#f-name", "")
        await page.press("#f-name", "Enter")
        await page.wait_for_selector(f'tr[data-run="{gids[2]}"]')
        await shot(page, "console-runs.png")
        # A run opens from the list.
        await page.click(f'tr[data-run="{gids[2]}"] a')
        await page.wait_for_selector('#run-state[data-state="completed"]')
        assert page.url.endswith(f"#/runs/{gids[2]}")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_a_router_run_shows_taken_and_untaken_edges_and_its_nodes(console: Console) -> None:
    req = json_format.ParseDict(ROUTER, orchestrator_pb2.SubmitGraphRequest())
    gid = (await console.dago.submit(req)).graph_id
    await console.dago.wait(gid)
    page = await open_page(console, f"#/runs/{gid}")
    try:
        await page.wait_for_selector('#run-state[data-state="completed"]')
        await page.wait_for_selector('#graph [data-edge="triage->page_oncall"][data-taken="taken"]')
        assert await attrs(page, "#graph [data-node]", "data-node", "data-state") == {
            "intake": "completed", "triage": "completed", "page_oncall": "completed",
            "queue_today": "skipped", "backlog": "skipped", "notify": "completed",
        }  # fmt: skip
        assert await attrs(page, "#graph [data-edge]", "data-edge", "data-taken") == {
            "intake->triage": "taken",
            "triage->page_oncall": "taken",
            "triage->queue_today": "untaken",
            "triage->backlog": "untaken",
            "page_oncall->notify": "taken",
            "queue_today->notify": "untaken",
            "backlog->notify": "untaken",
        }
        assert await edges_crossing_boxes(page) == []
        # The run's inputs and result.
        await page.click(".io summary")
        await page.wait_for_selector("#run-result .json")
        result = await page.inner_text("#run-result")
        assert '"route": "urgent"' in result and "routed to urgent" in result, result
        assert '"priority": 9' in await page.inner_text('.io [aria-label="inputs"]')
        # The timeline: one bar per attempt, none for the skipped nodes.
        bars = await attrs(page, "#gantt .bar", "data-node", "data-state")
        assert bars == {n: "completed" for n in ("intake", "triage", "page_oncall", "notify")}
        # A node's panel: its attempt with input and output.
        await page.click('#graph [data-node="page_oncall"]')
        await page.wait_for_selector('[data-panel="page_oncall"] .attempt[data-attempt="1"]')
        assert page.url.endswith(f"#/runs/{gid}/nodes/page_oncall")
        panel = await page.inner_text("#node-panel")
        assert "completed" in panel and "worker w1" in panel, panel
        output = await page.inner_text('[data-panel="page_oncall"] [data-output="1"]')
        assert '"page"' in output and '"checkout returns 500"' in output, output
        # The router's panel names its route.
        await page.focus('#graph [data-node="triage"]')
        await page.keyboard.press("Enter")
        await page.wait_for_selector('[data-panel="triage"] .route')
        route = await page.inner_text('[data-panel="triage"] .route')
        assert route == "route urgent → page_oncall", route
        await shot(page, "console-router.png")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_a_loop_run_shows_its_loop_edge_taken_and_a_bar_per_iteration(
    console: Console,
) -> None:
    loop = json.loads((ROOT / "examples" / "loop.json").read_text())
    gid = (
        await console.dago.submit(
            json_format.ParseDict(loop, orchestrator_pb2.SubmitGraphRequest())
        )
    ).graph_id
    page = await open_page(console, f"#/runs/{gid}")
    try:
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        await page.wait_for_selector('#graph [data-edge="poll->poll"][data-taken="taken"]')
        assert await attrs(page, "#graph [data-edge]", "data-edge", "data-taken") == {
            "poll->poll": "taken",
            "poll->done": "taken",
        }
        assert await edges_crossing_boxes(page) == []
        iterations = await page.eval_on_selector_all(
            '#gantt .bar[data-node="poll"]', "b => b.map(e => e.dataset.iteration)"
        )
        assert iterations == ["1", "2", "3"], iterations  # until: 3
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


@pytest.mark.parametrize("example", sorted(p.stem for p in (ROOT / "examples").glob("*.json")))
async def test_no_edge_of_an_example_crosses_a_box(console: Console, example: str) -> None:
    body = json.loads((ROOT / "examples" / f"{example}.json").read_text())
    req = json_format.ParseDict(body, orchestrator_pb2.SubmitGraphRequest())
    gid = (await console.dago.submit(req)).graph_id
    page = await open_page(console, f"#/runs/{gid}")
    try:
        await page.wait_for_selector("#run-state")
        drawn = await page.eval_on_selector_all("#graph [data-edge]", "e => e.length")
        assert drawn == len(body["graph"]["edges"])
        assert await edges_crossing_boxes(page) == []
        await shot(page, f"console-example-{example}.png")
    finally:
        await page.close()
        if any("wait" in n for n in body["graph"]["nodes"]):  # it waits for a person
            await console.dago.cancel(gid, "the test is done")
        await console.dago.wait(gid)  # no run left running for the next tests


async def test_no_edge_of_a_dense_graph_crosses_a_box(console: Console) -> None:
    # Two chains of five, every node linked to every later one of its chain and across.
    ids = [f"{c}{i}" for c in "ab" for i in range(5)]
    edges = [edge(f"{c}{i}", f"{c}{j}") for c in "ab" for i in range(5) for j in range(i + 1, 5)]
    edges += [edge(f"a{i}", f"b{i + 2}") for i in range(3)] + [edge("b0", "a4")]
    gid = (await console.dago.submit(request([echo(n) for n in ids], edges))).graph_id
    page = await open_page(console, f"#/runs/{gid}")
    try:
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        assert await page.eval_on_selector_all("#graph [data-edge]", "e => e.length") == len(edges)
        assert await edges_crossing_boxes(page) == []
        taken = await attrs(page, "#graph [data-edge]", "data-edge", "data-taken")
        assert set(taken.values()) == {"taken"}, taken
        await shot(page, "console-dense.png")
    finally:
        await page.close()


async def test_retries_a_failure_and_edges_around_boxes(console: Console) -> None:
    # start -> (flaky, retried twice) -> mid -> bad (fails); start -> bad skips a layer.
    nodes = [
        echo("start", x=1),
        tool("flaky", "flaky", inputs={"fail_attempts": 2, "value": "v"}, retry=fast_retry(3)),
        echo("side", y=2),
        echo("mid", z=3),
        tool("bad", "fail", inputs={"message": "the ledger is closed"}),
    ]
    edges = [
        edge("start", "flaky"), edge("start", "side"), edge("flaky", "mid"),
        edge("side", "mid"), edge("mid", "bad"), edge("start", "bad", label="shortcut"),
    ]  # fmt: skip
    gid = (await console.dago.submit(request(nodes, edges))).graph_id
    page = await open_page(console, f"#/runs/{gid}/nodes/flaky")
    try:
        await page.wait_for_selector('#run-state[data-state="failed"]', timeout=20_000)
        await page.wait_for_selector('#gantt .bar[data-node="bad"]')
        error = await page.inner_text("#run-error")
        assert "at node bad" in error and "the ledger is closed" in error, error
        assert (
            await page.get_attribute("#run-error [data-failed-node]", "data-failed-node") == "bad"
        )
        color = await page.eval_on_selector("#run-error", "e => getComputedStyle(e).color")
        assert color == "rgb(198, 40, 40)", color  # red
        assert await edges_crossing_boxes(page) == []
        flaky = await page.eval_on_selector_all(
            '#gantt .bar[data-node="flaky"]',
            "b => b.map(e => [e.dataset.attempt, e.dataset.state])",
        )
        assert [a for a, _ in flaky] == ["1", "2", "3"] and flaky[-1][1] == "completed", flaky
        assert all(s != "completed" for _, s in flaky[:2]), flaky
        assert len(await page.query_selector_all('#gantt .gantt-row[data-row="flaky"] .wait')) == 2
        # The node panel opened from the URL lists the three attempts, the failed ones' errors.
        await page.wait_for_selector('[data-panel="flaky"] .attempt[data-attempt="3"]')
        first = await page.inner_text('[data-panel="flaky"] .attempt[data-attempt="1"]')
        assert "transient: flaky: attempt 1 fails on purpose" in first, first
        await page.click("#run-error [data-failed-node]")
        await page.wait_for_selector('[data-panel="bad"] .attempt-error')
        assert await page.is_disabled("#cancel")
        await shot(page, "console-failed.png")
        # The live view opens the same run.
        await page.click(".live-link")
        await page.wait_for_selector('#run-state[data-state="failed"]')
        assert page.url.endswith(f"/ui/#{gid}")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_an_agent_node_shows_its_streamed_text_and_tool_calls(console: Console) -> None:
    # The offline model calls every tool it is given once, then answers from the results.
    scout = {"id": "scout", "agent": {"llm": {"prompt": "find the order"}, "tools": ["echo"]}}
    gid = (await console.dago.submit(request([scout]))).graph_id
    page = await open_page(console, f"#/runs/{gid}/nodes/scout")
    try:
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        await page.wait_for_selector('[data-panel="scout"] .attempt[data-attempt="1"]')
        await page.wait_for_function(
            "document.querySelector('[data-stream=\"scout\"]').textContent.includes('tool result')"
        )
        text = await page.inner_text('[data-stream="scout"]')
        assert text.startswith("[offline] calling echo") and "from 1 tool result" in text, text
        calls = await page.inner_text('[data-tools="scout"]')
        assert calls.startswith("echo(") and "→" in calls, calls
        facts = await page.inner_text('[data-panel="scout"] .attempt[data-attempt="1"] .facts')
        assert re.search(r"tokens [1-9]\d* in / [1-9]\d* out", facts), facts
        await shot(page, "console-agent.png")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_the_text_of_a_running_model_streams_into_its_panel(
    redis_single: RedisServer, browser: Browser
) -> None:
    # The offline model writes 8 words per second: its answer takes about two seconds.
    async with serving(redis_single.url, browser, DAGO_OFFLINE_TOKENS_PER_S="8") as c:
        writer = {"id": "writer", "llm": {"prompt": "write a short note about queues and workers"}}
        gid = (await c.dago.submit(request([writer]))).graph_id
        page = await open_page(c, f"#/runs/{gid}/nodes/writer")
        try:
            await page.wait_for_function(
                """() => document.querySelector('[data-stream="writer"]')?.textContent.length > 0
                  && document.getElementById('run-state')?.dataset.state === 'running'""",
                timeout=20_000,
            )
            partial = await page.inner_text('[data-stream="writer"]')
            await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
            await page.wait_for_selector('#graph [data-node="writer"][data-state="completed"]')
            full = await page.inner_text('[data-stream="writer"]')
            assert full.startswith(partial) and len(full) > len(partial), (partial, full)
            result = await c.dago.result(gid)
            assert full == result.node_outputs["writer"].struct_value["text"]
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            await page.close()


async def test_cancel_a_running_run(console: Console) -> None:
    nodes = [echo("first"), tool("wait", "hold", inputs={"seconds": 60}), echo("after")]
    gid = (
        await console.dago.submit(request(nodes, [edge("first", "wait"), edge("wait", "after")]))
    ).graph_id
    page = await open_page(console, f"#/runs/{gid}")
    try:
        await page.wait_for_selector(
            '#graph [data-node="wait"][data-state="running"]', timeout=20_000
        )
        await page.wait_for_selector('#gantt .bar[data-node="wait"][data-state="running"]')
        await page.click("#cancel")
        await page.fill("#cancel-reason", "stopped by the console test")
        await page.click("#cancel-confirm")
        await page.wait_for_selector('#run-state[data-state="cancelled"]', timeout=20_000)
        await page.wait_for_selector('#graph [data-node="wait"][data-state="cancelled"]')
        st = await console.dago.status(gid)
        assert st.state == execution_pb2.GRAPH_STATE_CANCELLED
        await page.wait_for_function(
            "document.getElementById('run-error').textContent"
            ".includes('stopped by the console test')"
        )
        assert await page.is_disabled("#cancel")
        await page.click(".events summary")
        log = await page.inner_text("#event-log")
        assert "graphCancelled" in log and "nodeStarted wait" in log, log
        seqs = [int(line.split()[0]) for line in log.splitlines()]
        assert seqs == list(range(1, len(seqs) + 1)), log  # each event once, in order
        await shot(page, "console-cancelled.png")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_ops_lists_workers_requeues_a_dead_letter_and_drops_another(
    redis_single: RedisServer, browser: Browser, tmp_path: Path
) -> None:
    env = {
        "DAGO_MAX_DELIVERIES": "1",
        "DAGO_TOOL_MODULES": TOOLS,
        "DAGO_WORKER_HEARTBEAT_MS": "200",
    }
    async with serving(redis_single.url, browser, workers=3, **env) as c:
        mark_a, mark_b = marker(tmp_path, "a"), marker(tmp_path, "b")
        gid_a = (await c.dago.submit(poison(mark_a))).graph_id
        gid_b = (await c.dago.submit(poison(mark_b))).graph_id
        page = await open_page(c, "#/ops")
        try:
            row_a = f'#dead-letters tr:has(a[href*="{gid_a}"])'
            row_b = f'#dead-letters tr:has(a[href*="{gid_b}"])'
            await page.wait_for_selector(row_a, timeout=20_000)
            await page.wait_for_selector(row_b, timeout=20_000)
            assert await page.inner_text(f"{row_a} td:nth-child(3)") == "p"
            assert await page.inner_text(f"{row_a} td:nth-child(8)") == "yes"  # its node waits
            live = [n for n, p in c.stack.procs.items() if n.startswith("w") and p.poll() is None]
            assert 1 <= len(live) <= 2, live  # the poison killed one or two workers
            for name in live:
                await page.wait_for_selector(f'#workers tr[data-worker="{name}"]')
                cell = f'#workers tr[data-worker="{name}"] [data-slots]'
                assert int(await page.inner_text(cell)) >= 1
            await shot(page, "console-ops.png")
            mark_a.unlink()  # a's work item no longer kills its worker
            await page.click(f'{row_a} button[data-action="requeue"]')
            await page.wait_for_function(
                "document.getElementById('ops-status').textContent.startsWith('requeued')"
            )
            await page.wait_for_selector(row_a, state="detached")
            assert (await c.dago.wait(gid_a)).state == execution_pb2.GRAPH_STATE_COMPLETED
            # Dropping takes a second click; the node, then the run, fail.
            drop = f'{row_b} button[data-action="drop"]'
            await page.click(drop)
            assert await page.inner_text(drop) == "Confirm drop"
            assert (await c.dago.status(gid_b)).state == execution_pb2.GRAPH_STATE_RUNNING
            await page.click(drop)
            await page.wait_for_function(
                "document.getElementById('ops-status').textContent.startsWith('dropped')"
            )
            assert "node p failed" in await page.inner_text("#ops-status")
            await page.wait_for_selector(row_b, state="detached")
            assert (await c.dago.wait(gid_b)).state == execution_pb2.GRAPH_STATE_FAILED
            assert page.errors == []  # type: ignore[attr-defined]
        except Exception as e:
            raise AssertionError(f"{e}\n{child_logs(c.stack)}") from e
        finally:
            await page.close()


async def test_with_authentication_the_console_sends_the_key_typed_in(
    redis_single: RedisServer, browser: Browser
) -> None:
    key = new_key()
    keys = f"{hash_key(key)}:team-ops"
    async with serving(
        redis_single.url, browser, key=key, DAGO_AUTH="keys", DAGO_API_KEYS=keys
    ) as c:
        gid = (await c.dago.submit(request([echo("a")], name="keyed"))).graph_id
        page = await open_page(c, "#/runs")
        try:
            await page.wait_for_selector("#error:not([hidden])")
            assert "authorization" in (await page.inner_text("#error")).lower()
            await page.fill("#api-key", key)
            await page.press("#api-key", "Tab")  # a change re-opens the page with the key
            await page.wait_for_selector(f'tr[data-run="{gid}"]')
            assert await page.inner_text(f'tr[data-run="{gid}"] .c-namespace') == "team-ops"
            assert await page.evaluate("sessionStorage.getItem('dago.apiKey')") == key
            assert await page.is_hidden("#error")
        finally:
            await page.close()


async def test_an_operator_filters_runs_by_namespace_a_tenant_sees_no_filter(
    redis_single: RedisServer, browser: Browser
) -> None:
    keys = {ns: new_key() for ns in ("team-a", "team-b", "ops")}
    api_keys = ",".join(f"{hash_key(k)}:{ns}" for ns, k in keys.items())
    env = {"DAGO_AUTH": "keys", "DAGO_API_KEYS": api_keys, "DAGO_OPERATOR_NAMESPACES": "ops"}
    async with serving(redis_single.url, browser, key=keys["ops"], **env) as c:
        runs: dict[str, str] = {}
        for ns in ("team-a", "team-b", "team-a"):
            async with AsyncDagoClient(f"127.0.0.1:{c.stack.port}", api_key=keys[ns]) as dago:
                runs[(await dago.submit(request([echo("a")], name=f"of-{ns}"))).graph_id] = ns
        of_a = [g for g, ns in reversed(runs.items()) if ns == "team-a"]

        async def as_caller(ns: str) -> Page:
            page = await c.browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.errors = errors  # type: ignore[attr-defined]
            # The key as if typed in earlier in this tab (the page reads it at load).
            await page.add_init_script(f"sessionStorage.setItem('dago.apiKey', {keys[ns]!r})")
            await page.goto(c.url("#/runs"))
            return page

        page = await as_caller("ops")
        try:
            # Every namespace's runs, each saying whose it is; the filter is offered.
            for gid in runs:
                await page.wait_for_selector(f'tr[data-run="{gid}"]')
            assert await listed(page) == list(reversed(runs))
            assert await page.is_visible("#f-namespace")
            assert await page.is_visible("th.c-namespace")
            shown = await attrs(page, "#runs-body tr[data-run]", "data-run", "data-run")
            for gid in shown:
                cell = f'tr[data-run="{gid}"] .c-namespace'
                assert await page.inner_text(cell) == runs[gid]
            suggested = await page.eval_on_selector_all(
                "#namespaces option", "os => os.map(o => o.value).sort()"
            )
            assert suggested == ["team-a", "team-b"]
            await page.fill("#f-namespace", "team-a")
            await page.press("#f-namespace", "Enter")
            await page.wait_for_function(
                "document.querySelectorAll('#runs-body tr[data-run]').length === 2"
            )
            assert await listed(page) == of_a
            assert "ns=team-a" in page.url
            await shot(page, "console-runs-namespace.png")
            # A namespace with no runs: an empty list, not an error.
            await page.fill("#f-namespace", "team-z")
            await page.press("#f-namespace", "Enter")
            await page.wait_for_selector("#runs-body td.empty")
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            await page.close()

        page = await as_caller("team-a")
        try:
            # A tenant: its own runs, neither the namespace filter nor the column.
            for gid in of_a:
                await page.wait_for_selector(f'tr[data-run="{gid}"]')
            assert await listed(page) == of_a
            assert await page.is_hidden("#f-namespace")
            assert await page.is_hidden("th.c-namespace")
            assert await page.is_hidden(f'tr[data-run="{of_a[0]}"] .c-namespace')
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            await page.close()


async def test_an_unknown_run_shows_the_error_as_text(console: Console) -> None:
    page = await open_page(console, "#/runs/0-%3Cb%3Enope%3C%2Fb%3E")  # 0-<b>nope</b>
    try:
        await page.wait_for_selector("#error:not([hidden])")
        error = await page.inner_text("#error")
        assert "not found" in error.lower() and "<b>nope</b>" in error, error
        assert await page.query_selector("#error b") is None  # text, not markup
    finally:
        await page.close()


async def test_console_routes(console: Console) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{console.port}") as http:
        r = await http.get("/console")
        assert r.status_code in (301, 302) and r.headers["location"].endswith("/console/")
        r = await http.get("/console/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="console.js">' in r.text
        r = await http.get("/console/console.js")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert re.search(rb"sessionStorage\.getItem\(.dago\.apiKey.\)", r.content)
        assert (await http.get("/ui/")).status_code == 200  # the live view stays


def listed(page: Page) -> object:
    return page.eval_on_selector_all("#runs-body tr[data-run]", "r => r.map(e => e.dataset.run)")


async def test_the_runs_list_filters_by_name_metadata_and_cost_on_the_server(
    console: Console,
) -> None:
    name = f"meta-{secrets.token_hex(2)}"
    teams = ["search", "ads", "search"]
    gids = []
    ask = {"id": "ask", "llm": {"prompt": "a few words about this run"}}  # the offline model
    for i, team in enumerate(teams):
        node = ask if i == 1 else echo("a", i=i)
        req = request([node], name=name, metadata={"team": team, "tier": i})
        gids.append((await console.dago.submit(req)).graph_id)
    usage = (await console.dago.wait(gids[1])).usage
    assert usage.input_tokens > 0
    await request_done(console, gids)
    other = (await console.dago.submit(request([echo("a")], name=f"{name}-x"))).graph_id
    page = await open_page(console, f"#/runs?name={name}&size=2")
    try:
        await page.wait_for_selector(f'tr[data-run="{gids[2]}"]')
        await page.click("#older")
        await page.wait_for_selector(f'tr[data-run="{gids[0]}"]')
        assert await page.inner_text("#page-no") == "page 2"
        await page.fill("#f-size", "25")
        await page.press("#f-size", "Enter")  # a filter changes: back to the first page
        await page.wait_for_function(
            "document.querySelectorAll('#runs-body tr[data-run]').length === 3"
        )
        assert await page.inner_text("#page-no") == "page 1"
        assert await listed(page) == gids[::-1]  # the exact name: not {name}-x's run
        assert other not in await listed(page)
        # Created before 2000: none; created after 2000 (and the name): the three.
        await page.fill("#f-before", "2000-01-01T00:00")
        await page.wait_for_selector("#runs-body td.empty")
        assert "before=2000-01-01T00%3A00" in page.url
        await page.fill("#f-before", "")
        await page.fill("#f-after", "2000-01-01T00:00")
        await page.wait_for_selector(f'tr[data-run="{gids[2]}"]')
        assert await listed(page) == gids[::-1]
        # Each run shows its steps, tokens and cost (echo nodes: one step, no model).
        row = f'tr[data-run="{gids[0]}"]'
        assert await page.inner_text(f"{row} .c-steps") == "1"
        assert await page.inner_text(f"{row} .c-tokens") == "0 in / 0 out"
        assert await page.inner_text(f"{row} .c-cost") == "$0.0000"
        tokens = f"{usage.input_tokens} in / {usage.output_tokens} out"
        assert await page.inner_text(f'tr[data-run="{gids[1]}"] .c-tokens') == tokens
        await page.fill("#f-meta", "team=search")
        await page.press("#f-meta", "Enter")
        await page.wait_for_function(
            "document.querySelectorAll('#runs-body tr[data-run]').length === 2"
        )
        assert await listed(page) == [gids[2], gids[0]]
        assert "meta=team%3Dsearch" in page.url
        await page.fill("#f-meta", "team=search, tier=2")  # several pairs: all must match
        await page.press("#f-meta", "Enter")
        await page.wait_for_function(
            "document.querySelectorAll('#runs-body tr[data-run]').length === 1"
        )
        assert await listed(page) == [gids[2]]
        await shot(page, "console-runs-filtered.png")
        # No echo run costs anything.
        await page.fill("#f-cost", "0.01")
        await page.press("#f-cost", "Enter")
        await page.wait_for_selector("#runs-body td.empty")
        # A filter the server refuses: its message, naming the field, as text.
        await page.fill("#f-cost", "")
        await page.fill("#f-meta", "=search")
        await page.press("#f-meta", "Enter")
        await page.wait_for_selector("#filter-error:not([hidden])")
        assert "metadata[0]" in await page.inner_text("#filter-error")
        assert await listed(page) == []
        await page.fill("#f-meta", "")
        await page.press("#f-meta", "Enter")
        await page.wait_for_selector("#filter-error[hidden]", state="attached")
        await page.wait_for_selector(f'tr[data-run="{gids[0]}"]')
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def request_done(c: Console, gids: list[str]) -> None:
    for gid in gids:
        await c.dago.wait(gid)


async def test_the_usage_page_without_history_says_to_set_postgres(console: Console) -> None:
    page = await open_page(console, "#/usage")
    try:
        await page.wait_for_selector("#usage-status:not([hidden])")
        assert "DAGO_POSTGRES_URL" in await page.inner_text("#usage-status")
        assert await page.is_hidden("#usage")
        assert await page.get_attribute('header a[data-page="usage"]', "aria-current") == ""
        await shot(page, "console-usage-no-history.png")
    finally:
        await page.close()


async def test_the_usage_page_sums_archived_runs_by_graph_name_model_and_day(
    redis_single: RedisServer, browser: Browser, postgres_url: str
) -> None:
    env = {"DAGO_POSTGRES_URL": postgres_url, "DAGO_MIGRATE_AT_START": "true"}
    async with serving(redis_single.url, browser, **env) as c:
        tag = secrets.token_hex(2)
        ask = {"id": "ask", "llm": {"prompt": "summarise the order in a few words"}}
        reqs = [  # graph a: two offline model runs; graph b: an echo run and a failed run
            request([ask], name=f"a-{tag}"),
            request([ask, echo("b")], [edge("ask", "b")], name=f"a-{tag}"),
            request([echo("a")], name=f"b-{tag}"),
            request([tool("boom", "fail")], name=f"b-{tag}"),
        ]
        gids = [(await c.dago.submit(r)).graph_id for r in reqs]
        status = [await c.dago.wait(g) for g in gids]
        tokens_in = sum(st.usage.input_tokens for st in status)
        tokens_out = sum(st.usage.output_tokens for st in status)
        assert tokens_in > 0 and tokens_out > 0
        await archived(postgres_url, gids)
        page = await open_page(c, "#/usage?group=graph_name")
        try:
            await page.wait_for_selector(f'#usage-body tr[data-key="a-{tag}"]')
            assert await usage_rows(page) == [
                [f"a-{tag}", "2", "0", str(tokens_in), str(tokens_out), "$0.0000"],
                [f"b-{tag}", "2", "1", "0", "0", "$0.0000"],
            ]
            total = await page.inner_text("#usage-total")
            want = ["total", "4", "1", str(tokens_in), str(tokens_out), "$0.0000"]
            assert total.split("\t") == want, total
            await shot(page, "console-usage.png")
            # By model: the offline model's two runs (nodes calling no model: key "").
            await page.select_option("#u-group", label="model")
            await page.wait_for_selector('#usage-body tr[data-key="offline"]')
            rows = {r[0]: r[1:4] for r in await usage_rows(page)}
            assert rows["offline"] == ["2", "0", str(tokens_in)], rows
            assert await page.inner_text("#usage thead th") == "model"
            await page.select_option("#u-group", label="day")
            today = datetime.now(UTC).strftime("%Y-%m-%d")
            await page.wait_for_selector(f'#usage-body tr[data-key="{today}"]')
            assert [r[:3] for r in await usage_rows(page)] == [[today, "4", "1"]]
            assert "group=day" in page.url
            # A range ending before the runs: none of them.
            await page.fill("#u-from", "2000-01-01T00:00")
            await page.fill("#u-to", "2000-01-02T00:00")
            await page.wait_for_selector("#usage-body td.empty")
            assert (await page.inner_text("#usage-total")).split("\t")[:2] == ["total", "0"]
            # A range ending before it starts: the server's message, naming the field.
            await page.fill("#u-from", "2000-01-03T00:00")
            await page.wait_for_selector("#usage-status:not([hidden])")
            assert "end_time" in await page.inner_text("#usage-status")
            assert await page.is_hidden("#usage")
            await page.fill("#u-from", "2000-01-01T00:00")
            await page.wait_for_selector("#usage-status[hidden]", state="attached")
            assert await page.is_visible("#usage-body td.empty")
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            await page.close()


async def usage_rows(page: Page) -> list[list[str]]:
    """The usage table's rows: [data-key, the cells' text after the first...]."""
    return await page.eval_on_selector_all(
        "#usage-body tr[data-key]",
        "r => r.map(e => [e.dataset.key, ...[...e.cells].slice(1).map(c => c.textContent)])",
    )


async def archived(url: str, gids: list[str]) -> None:
    """Waits until every run of ``gids`` is in PostgreSQL's dago_runs."""

    async def done() -> bool:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT graph_id FROM dago_runs")
            return set(gids) <= {r[0] for r in await cur.fetchall()}

    await eventually(done, timeout=30)


APPROVED = 'nodes.review.output.decision == "approve"'
REJECTED = 'nodes.review.output.decision == "reject"'
NOTE_SCHEMA = json.dumps(
    {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
)


def review(name: str, **spec: object) -> orchestrator_pb2.SubmitGraphRequest:
    """draft (echo) -> review (a wait) -> publish on approve, drop on reject."""
    nodes = [
        echo("draft", text="draft of {{ inputs.who }}"),
        {
            "id": "review",
            "wait": {
                "prompt": "Publish the {{ nodes.draft.output.text }}?",
                "display": {"draft": "{{ nodes.draft.output.text }}", "words": 3},
                **spec,
            },
        },
        echo("publish", note="{{ nodes.review.output.payload }}"),
        echo("drop", by="{{ nodes.review.output.actor }}"),
    ]
    edges = [
        edge("draft", "review"),
        edge("review", "publish", APPROVED),
        edge("review", "drop", REJECTED),
    ]
    return request(nodes, edges, inputs={"who": name}, name=name)


async def inbox(c: Console) -> list[str]:
    """The graph ids of ListWaits, in its order (every page)."""
    out, token = [], ""
    while True:
        req = orchestrator_pb2.ListWaitsRequest(page_size=1000, page_token=token)
        resp = await c.dago.stub.ListWaits(req, timeout=10)
        out += [w.graph_id for w in resp.waits]
        token = resp.next_page_token
        if not token:
            return out


async def node_state(c: Console, gid: str, node: str) -> int:
    st = await c.dago.status(gid)
    return next(n.state for n in st.nodes if n.node_id == node)


async def test_the_approvals_inbox_lists_waits_and_decides_them(console: Console) -> None:
    tag = secrets.token_hex(2)
    gids = [(await console.dago.submit(review(f"inbox-{tag}-{i}"))).graph_id for i in range(3)]
    schema_gid = (
        await console.dago.submit(
            review(
                f"inbox-{tag}-schema",
                payload_schema=NOTE_SCHEMA,
                timeout="3600s",
                timeout_decision="reject",
            )
        )
    ).graph_id
    mine = [*gids, schema_gid]
    await eventually(lambda: _all_listed(console, mine), timeout=20, interval=0.1)
    page = await open_page(console, "#/approvals?size=3")
    card = lambda gid: f'#approvals li[data-wait="{gid}/review"]'  # noqa: E731
    shown_ids = "ls => ls.map(l => l.dataset.wait.split('/')[0])"
    try:
        # Paged: three a page here, in ListWaits' order.
        everyone = await inbox(console)
        await page.wait_for_selector(card(everyone[0]))
        assert (
            await page.eval_on_selector_all("#approvals li[data-wait]", shown_ids) == (everyone[:3])
        )
        assert await page.is_disabled("#ap-prev") and not await page.is_disabled("#ap-next")
        await page.click("#ap-next")
        await page.wait_for_selector(card(everyone[3]))
        assert await page.inner_text("#ap-page-no") == "page 2"
        assert (
            await page.eval_on_selector_all("#approvals li[data-wait]", shown_ids)
            == (everyone[3:6])
        )
        await page.click("#ap-prev")
        await page.wait_for_selector(card(everyone[0]))
        await page.goto(console.url("#/approvals"))
        for gid in mine:
            await page.wait_for_selector(card(gid))
        assert await page.get_attribute('header a[data-page="approvals"]', "aria-current") == ""
        # Oldest first, as ListWaits answers.
        shown = await page.eval_on_selector_all("#approvals li[data-wait]", shown_ids)
        assert [g for g in shown if g in mine] == [g for g in await inbox(console) if g in mine]
        first = card(gids[0])
        prompt = await page.inner_text(f"{first} .decide-prompt")
        assert prompt == f"Publish the draft of inbox-{tag}-0?", prompt
        display = await page.inner_text(f'{first} .json[aria-label="display"]')
        assert f'"draft of inbox-{tag}-0"' in display and '"words": 3' in display, display
        assert await page.inner_text(f"{first} a.wait-run") == f"inbox-{tag}-0"
        assert await page.get_attribute(f"{first} a.wait-run", "href") == (
            f"#/runs/{gids[0]}/nodes/review"
        )
        assert "waiting since" in await page.inner_text(f"{first} .facts")
        assert await page.query_selector(f"{first} textarea") is None  # no schema: no payload
        await shot(page, "console-approvals.png")
        # Approve the second: its run completes down the approve branch and leaves the inbox.
        await page.click(f'{card(gids[1])} button[data-decision="approve"]')
        await page.wait_for_selector(card(gids[1]), state="detached", timeout=10_000)
        status = await page.inner_text("#approvals-status")
        assert status.startswith(f"approve sent for node review of run {gids[1]}"), status
        done = await console.dago.wait(gids[1])
        assert done.state == execution_pb2.GRAPH_STATE_COMPLETED
        states = {n.node_id: n.state for n in done.nodes}
        assert states["publish"] == execution_pb2.NODE_STATE_COMPLETED, states
        assert states["drop"] == execution_pb2.NODE_STATE_SKIPPED, states
        # A payload form when the node has a schema: JSON checked here, then by the server.
        sc = card(schema_gid)
        assert "its timeout decides at " in await page.inner_text(f"{sc} .wait-deadline")
        assert await page.query_selector(f"{first} .wait-deadline") is None
        approve = f'{sc} button[data-decision="approve"]'
        await page.fill(f"{sc} textarea", '{"note": ')
        await page.click(approve)
        await page.wait_for_selector(f'{sc} textarea[aria-invalid="true"]')
        assert "not valid JSON" in await page.inner_text(f"{sc} .decide-error")
        await page.fill(f"{sc} textarea", '{"note": 5}')
        await page.click(approve)
        await page.wait_for_function(
            f"document.querySelector('{sc} .decide-error').textContent.startsWith('payload:')"
        )
        error = await page.inner_text(f"{sc} .decide-error")
        assert '5 is not of type "string"' in error, error
        assert await page.get_attribute(f"{sc} textarea", "aria-invalid") == "true"
        assert await node_state(console, schema_gid, "review") == execution_pb2.NODE_STATE_WAITING
        await shot(page, "console-approvals-invalid.png")
        await page.fill(f"{sc} textarea", '{"note": "ship it"}')
        await page.fill(f"{sc} input.decide-comment", "looks good")
        await page.click(approve)
        await page.wait_for_selector(sc, state="detached", timeout=10_000)
        assert (await console.dago.wait(schema_gid)).state == execution_pb2.GRAPH_STATE_COMPLETED
        result = await console.dago.result(schema_gid)
        assert result.node_outputs["publish"].struct_value["note"]["note"] == "ship it"
        # The run page's node panel offers the decisions too: reject the first there.
        await page.click(f"{first} a.wait-run")
        await page.wait_for_selector('[data-panel="review"] [data-decide="review"] button')
        assert await page.inner_text('[data-panel="review"] .decide-prompt') == (
            f"Publish the draft of inbox-{tag}-0?"
        )
        await page.wait_for_selector('#gantt [data-waiting="review"]', state="attached")
        await page.click('[data-panel="review"] button[data-decision="reject"]')
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        await page.wait_for_selector('#graph [data-node="drop"][data-state="completed"]')
        assert await node_state(console, gids[0], "publish") == execution_pb2.NODE_STATE_SKIPPED
        await page.wait_for_selector('#gantt [data-row="review"] .wait.decision', state="attached")
        await page.click('#graph [data-node="review"]')
        await page.wait_for_function(
            "document.querySelector('[data-panel=\"review\"] .decide-status')"
            "?.textContent.startsWith('decided: reject')"
        )
        await shot(page, "console-run-decided.png")
        # The last one is still in the inbox; cancelled, it leaves it.
        await page.click('header a[data-page="approvals"]')
        await page.wait_for_selector(card(gids[2]))
        assert await page.query_selector(card(gids[0])) is None
        await console.dago.cancel(gids[2], "test over")
        await page.wait_for_selector(card(gids[2]), state="detached", timeout=10_000)
        assert page.errors == []  # type: ignore[attr-defined]
    except Exception as e:
        raise AssertionError(f"{e}\n{child_logs(console.stack)}") from e
    finally:
        await page.close()


async def _all_listed(c: Console, gids: list[str]) -> bool:
    return set(gids) <= set(await inbox(c))


async def test_timeline_bars_open_their_node_from_the_keyboard(console: Console) -> None:
    nodes = [echo("one"), echo("two")]
    gid = (await console.dago.submit(request(nodes, [edge("one", "two")]))).graph_id
    await console.dago.wait(gid)
    page = await open_page(console, f"#/runs/{gid}")
    try:
        bar = '#gantt .bar[data-node="two"]'
        await page.wait_for_selector(f'{bar}[data-state="completed"]')
        assert await page.get_attribute(bar, "tabindex") == "0"
        label = await page.get_attribute(bar, "aria-label") or ""
        assert label.startswith("node two attempt 1: completed, ") and " ms" in label, label
        # Tab from the first bar reaches the second; Enter opens its panel.
        await page.focus('#gantt .bar[data-node="one"]')
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.dataset.node") == "two"
        await page.keyboard.press("Enter")
        await page.wait_for_selector('[data-panel="two"] .attempt[data-attempt="1"]')
        assert page.url.endswith(f"#/runs/{gid}/nodes/two")
        await shot(page, "console-gantt-focus.png")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_a_decision_sent_after_another_one_won_shows_the_winner(console: Console) -> None:
    # publish sleeps: the run still runs when the page's late decision arrives.
    req = review(f"conflict-{secrets.token_hex(2)}")
    for node in req.graph.nodes:
        if node.id == "publish":
            node.tool.name = "sleep"
            node.inputs.Clear()
            node.inputs.update({"seconds": 30})
    gid = (await console.dago.submit(req)).graph_id
    await eventually(lambda: _all_listed(console, [gid]), timeout=20, interval=0.1)
    page = await open_page(console, "#/approvals")
    sel = f'#approvals li[data-wait="{gid}/review"]'
    try:
        await page.wait_for_selector(sel)
        # The inbox stops refreshing (its calls fail), so the card stays while another
        # client decides.
        await page.route("**/ListWaits", lambda route: route.abort())
        signal = orchestrator_pb2.SignalGraphRequest(
            graph_id=gid, node_id="review", decision="approve", signal_id="by-the-test"
        )
        await console.dago.stub.SignalGraph(signal, timeout=10)
        await page.click(f'{sel} button[data-decision="reject"]')
        await page.wait_for_function(
            f"document.querySelector('{sel} .decide-status').textContent.startsWith('already')"
        )
        status = await page.inner_text(f"{sel} .decide-status")
        assert status == "already decided: approve by anonymous", status
        assert await page.get_attribute(
            f'{sel} button[data-decision="approve"]', "aria-pressed"
        ) == ("true")
        assert await page.is_disabled(f'{sel} button[data-decision="reject"]')
        await page.unroute("**/ListWaits")
        await page.wait_for_selector(sel, state="detached", timeout=10_000)
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()
        await console.dago.cancel(gid, "the test is done")


async def test_fork_a_failed_run_from_its_failed_node_with_a_patch(console: Console) -> None:
    # start -> check (fails) -> end; the fork patches check into an echo.
    nodes = [
        echo("start", x=1),
        tool("check", "fail", inputs={"message": "bad plan"}),
        echo("end", y=2),
    ]
    gid = (
        await console.dago.submit(request(nodes, [edge("start", "check"), edge("check", "end")]))
    ).graph_id
    st = await console.dago.wait(gid)
    assert st.state == execution_pb2.GRAPH_STATE_FAILED
    patch = {"check": {"tool": {"name": "echo"}}}
    dry = await console.dago.fork(gid, from_nodes=["check"], node_patches=patch, dry_run=True)
    page = await open_page(console, f"#/runs/{gid}/nodes/check")
    try:
        await page.wait_for_selector('#run-state[data-state="failed"]', timeout=20_000)
        await page.wait_for_selector('[data-panel="check"]')
        await page.wait_for_selector("#fork:not([disabled])")
        # Keyboard reachable: focus the button, Enter opens the dialog.
        await page.focus("#fork")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#fork-dialog[open]")
        checked = await page.eval_on_selector_all(
            "#fork-nodes input:checked", "bs => bs.map(b => b.value)"
        )
        assert checked == ["check"], checked
        assert await page.is_disabled("#fork-go")
        # Bad JSON is refused before sending.
        await page.fill("#fork-node-patches", "{not json")
        await page.click("#fork-preview")
        assert "node patches: not JSON" in await page.inner_text("#fork-error")
        # A server error (INVALID_ARGUMENT: an unknown node) shows as text near the form.
        await page.fill("#fork-node-patches", json.dumps({"nope": {"inputs": {}}}))
        await page.click("#fork-preview")
        await page.wait_for_selector("#fork-error:not([hidden])")
        error = await page.inner_text("#fork-error")
        assert error.startswith("node_patches") and "nope" in error, error
        assert await page.is_disabled("#fork-go")
        await page.fill("#fork-node-patches", json.dumps(patch))
        # "failed only" plans the same here (check failed, end was skipped because of it).
        await page.check("#fork-mode-failed")
        await page.click("#fork-preview")
        await page.wait_for_selector("#fork-plan:not([hidden])")
        assert await page.inner_text('#fork-plan [data-plan="run"]') == "check, end"
        assert not await page.is_disabled("#fork-go")
        # Any change hides the preview and disables Fork until the next preview.
        await page.check("#fork-mode-from")
        assert await page.is_hidden("#fork-plan") and await page.is_disabled("#fork-go")
        await page.click("#fork-preview")
        await page.wait_for_selector("#fork-plan:not([hidden])")
        plan = await attrs(page, "#fork-plan dd", "data-plan", "data-plan")
        assert set(plan) == {"reused", "run", "saved", "estimate"}
        texts = {k: await page.inner_text(f'#fork-plan [data-plan="{k}"]') for k in plan}
        assert texts["reused"] == ", ".join(dry.reused_nodes) == "start", texts
        assert texts["run"] == ", ".join(dry.run_nodes) == "check, end", texts
        assert texts["saved"] == f"${dry.cost_saved_usd:.4f}", texts
        assert texts["estimate"] == f"${dry.cost_estimate_usd:.4f}", texts
        await shot(page, "console-fork-preview.png")
        await page.click("#fork-go")
        await page.wait_for_url(re.compile(r"#/runs/(?!" + re.escape(gid) + r")[^/]+$"))
        new = page.url.rsplit("#/runs/", 1)[1]
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        assert await page.get_attribute("#forked-from a", "data-forked-from") == gid
        await page.wait_for_selector('#graph [data-node="start"][data-reused]')
        assert await page.query_selector('#graph [data-node="check"][data-reused]') is None
        await page.click('#graph [data-node="start"]')
        await page.wait_for_selector('[data-panel="start"] .badge.reused')
        assert await page.query_selector("#gantt .row-note[data-reused]") is not None
        await shot(page, "console-fork-new.png")
        done = await console.dago.status(new)
        assert done.forked_from == gid and done.state == execution_pb2.GRAPH_STATE_COMPLETED
        assert page.errors == []  # type: ignore[attr-defined]
        # The link goes back to the source run.
        await page.click("#forked-from a")
        await page.wait_for_selector('#run-state[data-state="failed"]')
        # The live view says so too.
        await page.goto(f"http://127.0.0.1:{console.port}/ui/#{new}")
        await page.wait_for_selector(f'#forked-from[data-forked-from="{gid}"]')
    finally:
        await page.close()


async def test_a_run_of_a_definition_says_which_version_it_ran(console: Console) -> None:
    g = json_format.ParseDict({"name": "greet", "nodes": [echo("a", x=1)]}, graph_pb2.Graph())
    await console.dago.publish_definition("console-greet", g)
    await console.dago.label_definition("console-greet", "prod", 1)
    gid = (await console.dago.submit(definition="console-greet@prod")).graph_id
    page = await open_page(console, f"#/runs/{gid}")
    try:
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        await page.wait_for_function(
            "() => document.body.innerText.includes('definition console-greet@1')"
        )
        await page.goto(f"http://127.0.0.1:{console.port}/ui/#{gid}")
        await page.wait_for_selector('#definition[data-definition="console-greet@1"]')
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


def graph_file(tmp_path: Path, name: str, body: dict[str, object]) -> Path:
    """A .json graph file to publish from the console."""
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


async def drop_file(page: Page, selector: str, name: str, body: dict[str, object]) -> None:
    """Drops a JSON file on ``selector`` as a browser would (a DataTransfer with the file)."""
    data = await page.evaluate_handle(
        """([name, text]) => {
          const dt = new DataTransfer();
          dt.items.add(new File([text], name, { type: 'application/json' }));
          return dt;
        }""",
        [name, json.dumps(body)],
    )
    await page.dispatch_event(selector, "drop", {"dataTransfer": data})


async def test_definition_publish_from_a_file_unchanged_and_refused(
    console: Console, tmp_path: Path
) -> None:
    name = f"cdef-{secrets.token_hex(2)}"
    v1 = graph_file(tmp_path, "v1.json", {"nodes": [echo("a", x=1)]})
    # A SubmitGraphRequest file (as in examples/) publishes its graph.
    v2 = {"graph": {"nodes": [echo("a", x=2)]}, "inputs": {}}
    bad = graph_file(tmp_path, "bad.json", {"nodes": [echo("a")], "edges": [edge("a", "zz")]})
    page = await open_page(console, "#/definitions")
    try:
        await page.wait_for_selector("#definitions-body")
        await page.fill("#pub-name", name)
        await page.fill("#pub-desc", "the console's first")
        await page.set_input_files("#pub-file", str(v1))
        await page.click("#pub-go")
        await page.wait_for_selector('#pub-result[data-created="true"][data-version="1"]')
        await page.wait_for_selector(f'#definitions-body tr[data-definition="{name}"]')
        row = await page.inner_text(f'tr[data-definition="{name}"]')
        assert "the console's first" in row and "\t1\t" in row, row
        # The same graph again: the latest version, created=false.
        await page.click("#pub-go")
        await page.wait_for_selector('#pub-result[data-created="false"][data-version="1"]')
        assert "created=false" in await page.inner_text("#pub-result")
        # A graph the server refuses: its message names the field.
        await page.set_input_files("#pub-file", str(bad))
        await page.click("#pub-go")
        await page.wait_for_function("document.querySelector('#pub-error').textContent !== ''")
        error = await page.inner_text("#pub-error")
        assert "edges[0].to" in error and '"zz"' in error, error
        assert await page.inner_text("#pub-result") == ""
        # A file dropped on the form: version 2; the row opens with the keyboard.
        await drop_file(page, "#pub-drop", "v2.json", v2)
        assert await page.inner_text("#pub-file-name") == "v2.json"
        await page.click("#pub-go")
        await page.wait_for_selector('#pub-result[data-created="true"][data-version="2"]')
        await shot(page, "console-definitions.png")
        await page.focus(f'tr[data-definition="{name}"]')
        await page.keyboard.press("Enter")
        await page.wait_for_selector('#versions-body tr[data-version="2"]')
        assert page.url.endswith(f"#/definitions/{name}")
        versions = await page.eval_on_selector_all(
            "#versions-body tr", "r => r.map(e => e.dataset.version)"
        )
        assert versions == ["2", "1"], versions
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def publish(console: Console, name: str, *graphs: dict[str, object]) -> None:
    for g in graphs:
        await console.dago.publish_definition(name, json_format.ParseDict(g, graph_pb2.Graph()))


async def test_definition_label_deprecate_and_view_a_version(console: Console) -> None:
    name = f"cdef-{secrets.token_hex(2)}"
    await publish(
        console,
        name,
        {"nodes": [echo("a", x=1)]},
        {"nodes": [echo("a", x=2), echo("b")], "edges": [edge("a", "b")]},
    )
    page = await open_page(console, f"#/definitions/{name}")
    try:
        await page.wait_for_selector('#versions-body tr[data-version="2"]')
        await page.fill("#label-name", "prod")
        await page.select_option("#label-version", "1")
        await page.click("#label-go")
        await page.wait_for_function(
            "document.querySelector('#versions-body tr[data-version=\"1\"] .labels')"
            ".textContent === 'prod'"
        )
        assert (await console.dago.definition(name, "prod")).version == 1
        # A label that may not be one is refused, naming the field.
        await page.fill("#label-name", "7")
        await page.click("#label-go")
        await page.wait_for_function(
            "document.querySelector('#label-status').textContent.startsWith('refused')"
        )
        assert "label" in await page.inner_text("#label-status")
        # Deprecate asks first, then marks the version.
        await page.click('button[data-deprecate="1"]')
        assert not await page.query_selector('tr[data-version="1"] [data-deprecated]')
        await page.click('button[data-deprecate="1"]')
        await page.wait_for_selector('tr[data-version="1"] [data-deprecated]')
        assert await page.is_disabled('button[data-deprecate="1"]')
        assert (await console.dago.definition(name, "1")).deprecated
        # A version opens (Space on its row): its graph drawn and its JSON.
        await page.focus('#versions-body tr[data-version="2"]')
        await page.keyboard.press(" ")
        await page.wait_for_selector('#version-title[data-version="2"]')
        assert page.url.endswith(f"#/definitions/{name}/versions/2")
        drawn = await page.eval_on_selector_all(
            "#def-graph [data-node]", "n => n.map(e => e.dataset.node)"
        )
        assert drawn == ["a", "b"], drawn
        assert await page.eval_on_selector_all("#def-graph [data-edge]", "e => e.length") == 1
        await page.click("#version-view summary")
        text = json.loads(await page.inner_text("#def-json"))
        assert [n["id"] for n in text["nodes"]] == ["a", "b"], text
        assert await page.get_attribute('#versions-body tr[data-version="2"]', "aria-current")
        await shot(page, "console-definition.png")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_run_a_definition_version_with_inputs(console: Console) -> None:
    name = f"cdef-{secrets.token_hex(2)}"
    await publish(console, name, {"nodes": [echo("a", x=1)]}, {"nodes": [echo("a", x=2)]})
    await console.dago.label_definition(name, "canary", 2)
    await console.dago.deprecate_definition(name, 1)
    page = await open_page(console, f"#/definitions/{name}/versions/1")
    try:
        await page.wait_for_selector('#version-title[data-version="1"]')
        assert await page.input_value("#run-ref") == f"{name}@1"
        # Inputs are checked as JSON before anything is sent.
        await page.fill("#run-inputs", '{"ticket": ')
        assert "inputs: not JSON" in await page.inner_text("#run-error")
        assert await page.get_attribute("#run-inputs", "aria-invalid") == "true"
        await page.fill("#run-inputs", '{"ticket": 42}')
        assert await page.inner_text("#run-error") == ""
        # The server refuses a deprecated version unless asked: its message is shown.
        await page.click("#run-go")
        await page.wait_for_function(
            "document.querySelector('#run-error').textContent.startsWith('refused')"
        )
        assert "deprecated" in await page.inner_text("#run-error")
        await page.fill("#run-ref", f"{name}@canary")
        await page.click("#run-go")
        await page.wait_for_url(re.compile(r"#/runs/[^/]+$"))
        gid = page.url.rsplit("/", 1)[1]
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        status = await console.dago.status(gid)
        assert (status.definition.name, status.definition.version) == (name, 2)
        submitted = await console.dago.get_graph(gid)
        assert json_format.MessageToDict(submitted.inputs) == {"ticket": 42}
        # The run links the version it ran; the runs list filters by definition.
        await page.click(f'#run-definition a[data-definition="{name}@2"]')
        await page.wait_for_selector('#version-title[data-version="2"]')
        other = (await console.dago.submit(request([echo("a")], name=name))).graph_id
        await page.goto(console.url("#/runs"))
        await page.wait_for_selector(f'tr[data-run="{other}"]')
        await page.wait_for_selector(f'#f-definition option[value="{name}"]', state="attached")
        await page.select_option("#f-definition", name)
        await page.wait_for_function(
            "document.querySelectorAll('#runs-body tr[data-run]').length === 1"
        )
        assert await listed(page) == [gid]
        assert f"definition={name}" in page.url
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


# Frame times (requestAnimationFrame deltas) and long tasks (> 50 ms) from the page's start.
FRAME_PROBE = """
window.__frames = [];
window.__longTasks = [];
new PerformanceObserver((l) => {
  for (const e of l.getEntries()) window.__longTasks.push(e.duration);
}).observe({ type: 'longtask', buffered: true });
let last = 0;
const tick = (t) => {
  if (last) window.__frames.push(t - last);
  last = t;
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""


def layered_dag(width: int, total: int) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """A gate (a wait node: the run holds until the test signals it) then echo nodes in layers
    of ``width``, each fed by the node above it and the one above right: ``total`` nodes."""
    nodes: list[dict[str, object]] = [{"id": "gate", "wait": {"prompt": "start?"}}]
    edges = []
    for k in range(total - 1):
        layer, i = divmod(k, width)
        nid = f"n{layer}_{i}"
        nodes.append(echo(nid, k=k))
        if layer == 0:
            edges.append(edge("gate", nid))
            continue
        edges.append(edge(f"n{layer - 1}_{i}", nid))
        if i + 1 < width:
            edges.append(edge(f"n{layer - 1}_{i + 1}", nid))
    return nodes, edges


def spread(values: list[float]) -> str:
    """n, median, p95 and max of durations in ms."""
    if not values:
        return "none"
    v = sorted(values)
    p95 = v[min(len(v) - 1, int(len(v) * 0.95))]
    return f"n={len(v)} median={v[len(v) // 2]:.1f} p95={p95:.1f} max={v[-1]:.1f} ms"


@pytest.mark.slow
async def test_a_500_node_graph_renders_and_updates_within_a_frame_budget(
    console: Console,
) -> None:
    nodes, edges = layered_dag(20, 500)
    gid = (await console.dago.submit(request(nodes, edges, name="five-hundred"))).graph_id
    page = await console.browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.add_init_script(FRAME_PROBE)
    measured = """() => ({
      frames: window.__frames.splice(0),
      longTasks: window.__longTasks.splice(0),
      draw: performance.getEntriesByName('graph-draw').map(e => e.duration),
      updates: performance.getEntriesByName('graph-update').map(e => e.duration),
      ticks: performance.getEntriesByName('gantt-tick').map(e => e.duration),
    })"""
    try:
        await page.goto(console.url(f"#/runs/{gid}"))
        await page.wait_for_selector('#graph [data-node="gate"][data-state="waiting"]')
        assert await page.eval_on_selector_all("#graph [data-node]", "n => n.length") == 500
        assert await page.eval_on_selector_all("#graph [data-edge]", "e => e.length") == len(edges)
        opened = await page.evaluate(measured)
        # The run goes on with the page open: 499 nodes' states stream into the drawn graph.
        await console.dago.signal(gid, "gate", "approve")
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
        await page.wait_for_function(
            "[...document.querySelectorAll('#graph [data-node]')]"
            ".every(g => g.dataset.state === 'completed')"
        )
        barred = "b => new Set(b.map(e => e.dataset.node)).size"  # the gate has two: wait, go
        assert await page.eval_on_selector_all("#gantt .bar", barred) == 500
        ran = await page.evaluate(measured)
        ran["updates"] = ran["updates"][len(opened["updates"]) :]
        ran["ticks"] = ran["ticks"][len(opened["ticks"]) :]
        print(f"\n500-node graph: draw {spread(opened['draw'])}")
        for phase, m in (("open", opened), ("run, updates streaming", ran)):
            slow = sum(1 for f in m["frames"] if f > 50)
            print(
                f"{phase}: state updates {spread(m['updates'])}; "
                f"timeline ticks {spread(m['ticks'])}"
                f"\n  frames {spread(m['frames'])}, {slow} over 50 ms; "
                f"long tasks {spread(m['longTasks'])}, total {sum(m['longTasks']):.0f} ms"
            )
        await shot(page, "console-500-nodes.png")
        assert errors == []
    finally:
        await page.close()


# --- maps, child runs, paused runs, rate limits (issue 25) ----------------------------------


def map_run(n: int, fails: int = 0, concurrency: int = 40) -> orchestrator_pb2.SubmitGraphRequest:
    """A map "each" over n items (the pause tool, instant) whose every ``fails``th item (from
    the fourth) fails; COLLECT keeps the map (and the run) going."""
    items = [{"fail": bool(fails) and i % fails == 3} for i in range(n)]
    body = tool("body", "pause", inputs={"value": "{{ index }}", "fail": "{{ item.fail }}"})
    each = {
        "id": "each",
        "map": {
            "items": "inputs.items",
            "node": body,
            "maxConcurrency": concurrency,
            "onFailure": "MAP_FAILURE_POLICY_COLLECT",
            "maxFailures": n,
        },
    }
    return request([each], inputs={"items": items})


async def test_a_map_run_shows_its_progress_bar_and_pages_its_items_by_state(
    console: Console,
) -> None:
    gid = (await console.dago.submit(map_run(240, fails=10))).graph_id
    page = await open_page(console, f"#/runs/{gid}/nodes/each")
    try:
        bar = '#map-bars [data-map="each"]'
        await page.wait_for_selector(bar)
        top = await page.eval_on_selector("#graph", "g => g.getBoundingClientRect().top")
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
        count = f"{bar} [data-count=%r]"
        await page.wait_for_function(
            f"document.querySelector(`{count % 'completed'}`).textContent === '216'"
        )
        assert await page.inner_text(count % "failed") == "24"
        assert await page.inner_text(count % "total") == "240"
        # Counts streaming in did not move what is below the bars.
        assert top == await page.eval_on_selector("#graph", "g => g.getBoundingClientRect().top")
        widths = await page.eval_on_selector_all(f"{bar} .seg", "s => s.map(e => e.style.width)")
        assert widths[:2] == ["90%", "10%"], widths
        # The panel's items: 50 a page, by index; the next page; a filter on the server.
        rows = '[data-items="each"] tbody tr[data-item]'
        await page.wait_for_selector(rows)
        assert await page.eval_on_selector_all(rows, "r => r.length") == 50
        assert await page.inner_text(f"{rows}:first-child td:nth-child(2)") == "completed"
        await page.click('[data-items="each"] [data-items-next]')
        await page.wait_for_selector(f'{rows}[data-item="50"]')
        await page.select_option('[data-item-filter="each"]', label="failed")
        await page.wait_for_selector(f'{rows}[data-item="3"]')
        indexes = await page.eval_on_selector_all(rows, "r => r.map(e => +e.dataset.item)")
        assert indexes == list(range(3, 240, 10)), indexes
        first = await page.inner_text(f'{rows}[data-item="3"]')
        assert "failed" in first and "item 3 fails" in first, first
        assert await page.is_disabled('[data-items="each"] [data-items-next]')
        # Each item as ListMapItems has it: state and attempt.
        req = orchestrator_pb2.ListMapItemsRequest(
            graph_id=gid, node_id="each", page_size=1, page_token="", state=0
        )
        (it,) = (await console.dago.stub.ListMapItems(req, timeout=10)).items
        assert it.index == 0 and it.attempt == 1
        await shot(page, "console-map.png")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_a_child_run_and_its_parent_link_to_each_other(console: Console) -> None:
    child = {"nodes": [echo("greet", text="hello")], "edges": []}
    nodes = [echo("prep"), {"id": "run", "subgraph": {"graph": child}}, echo("after")]
    req = request(nodes, [edge("prep", "run"), edge("run", "after")], name="parent")
    gid = (await console.dago.submit(req)).graph_id
    assert (await console.dago.wait(gid)).state == execution_pb2.GRAPH_STATE_COMPLETED
    page = await open_page(console, f"#/runs/{gid}/nodes/run")
    try:
        link = '[data-panel="run"] a[data-child]'
        await page.wait_for_selector(link)
        kid = await page.get_attribute(link, "data-child")
        assert kid and kid != gid
        await page.click(link)
        await page.wait_for_selector(f'#run-parent a[data-parent="{gid}"]')
        assert await page.inner_text("#run-parent") == f"child of {gid} (node run)"
        await shot(page, "console-child.png")
        await page.click("#run-parent a")
        await page.wait_for_selector('[data-panel="run"]')
        assert page.url.endswith(f"#/runs/{gid}/nodes/run")
        # The runs list by parent: the child only, its parent column linked.
        await page.goto(console.url(f"#/runs?parent={gid}"))
        await page.wait_for_selector(f'tr[data-run="{kid}"]')
        listed_runs = await page.eval_on_selector_all(
            "#runs-body tr[data-run]", "r => r.map(e => e.dataset.run)"
        )
        assert listed_runs == [kid]
        assert await page.inner_text(f'tr[data-run="{kid}"] .c-parent') == f"{gid} · run"
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


MODEL = "claude-sonnet-4-6"


@pytest.mark.slow  # the worker's first model call imports the Anthropic SDK (seconds)
async def test_a_paused_run_resumes_when_its_limits_are_raised_throttles_and_rate_limits(
    redis_single: RedisServer, browser: Browser, fake: FakeAnthropic
) -> None:
    # As tests/engine/test_budgets.py: the second call does not fit in $0.0095, the run pauses.
    fake.cap_output = True
    fake.count_tokens = True
    fake.default = Text("An answer.", usage=Usage(input=0, output=600))
    env = {
        "DAGO_ANTHROPIC_API_KEY": "sk-fake",
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
        "DAGO_LLM_PROVIDER": "anthropic",
        # A bucket of two requests, one more a second: four calls at once are throttled.
        "DAGO_RATE_LIMITS": json.dumps({f"anthropic/{MODEL}": {"requests_per_minute": 60}}),
    }
    steps = [
        {"id": f"n{i}", "llm": {"prompt": f"Step {i}.", "model": MODEL, "max_tokens": 1024}}
        for i in range(2)
    ]
    limits = {"max_cost_usd": 0.0095, "on_exceed": "LIMIT_ACTION_PAUSE"}
    async with serving(redis_single.url, browser, **env) as c:
        req = request(steps, [edge("n0", "n1")], limits=limits)
        gid = (await c.dago.submit(req)).graph_id
        page = await open_page(c, f"#/runs/{gid}")
        try:
            await page.wait_for_selector('#run-state[data-state="paused"]', timeout=20_000)
            await page.wait_for_selector('#run-story [data-story="budgetExhausted"]')
            story = await page.inner_text("#run-story")
            assert "run paused at node n1: max_cost_usd" in story, story
            assert "max cost $0.0095" in await page.inner_text("#run-facts")
            await shot(page, "console-paused.png")
            # Below what the run used: the server's refusal, naming the field; then enough.
            await page.click("#raise-limits")
            await page.fill("#limit-cost", "0.001")
            await page.click("#limits-apply")
            await page.wait_for_selector("#limits-status.err")
            assert "limits.max_cost_usd" in await page.inner_text("#limits-status")
            assert (await c.dago.status(gid)).state == execution_pb2.GRAPH_STATE_PAUSED
            await page.fill("#limit-cost", "1")
            await page.click("#limits-apply")
            await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
            assert await page.inner_text("#limits-status") == "limits raised: the run resumed"
            await page.wait_for_selector('#run-story [data-story="graphResumed"]')
            assert "run resumed (n1)" in await page.inner_text("#run-story")
            assert await page.is_disabled("#raise-limits")
            # The operations page: the model's rate limit.
            await page.goto(c.url("#/ops"))
            row = f'#rate-limits tr[data-limit="anthropic/{MODEL}"]'
            await page.wait_for_selector(row)
            cells = await page.eval_on_selector_all(f"{row} td", "t => t.map(e => e.innerText)")
            assert cells[:3] == ["anthropic", MODEL, "60"], cells
            usage = await page.inner_text("#namespace-usage")
            assert usage.startswith("namespace default · weight 1 · running "), usage
            await shot(page, "console-rate-limits.png")
            # Four calls at once: those the bucket has no room for are throttled, in the story.
            wide = request([{**s, "id": f"w{i}"} for i in range(4) for s in steps[:1]])
            wid = (await c.dago.submit(wide)).graph_id
            await page.goto(c.url(f"#/runs/{wid}"))
            await page.wait_for_selector('#run-story [data-story="nodeThrottled"]')
            story = await page.inner_text("#run-story")
            assert f"throttled: requests_per_minute of anthropic/{MODEL}" in story, story
            await shot(page, "console-throttled.png")
            assert page.errors == []  # type: ignore[attr-defined]
        except Exception as e:
            raise AssertionError(f"{e}\n{child_logs(c.stack)}") from e
        finally:
            await page.close()


# 500 items in `make test`; the 10,000 the page is built for with RELIABILITY_FULL=1 (the
# same checks, ~20x the work): `RELIABILITY_FULL=1 make test PYTEST_ARGS="-k big_map"`.
BIG_MAP = knob("CONSOLE_MAP_ITEMS", 500, 10_000)


async def test_a_big_map_streams_its_counts_and_pages_its_items(console: Console) -> None:
    """The page of a big map (10,000 items with RELIABILITY_FULL) while it runs: the bar's
    counts stream in, the item list holds one page (50), the map's output is not drawn; frame
    times are printed."""
    gid = (await console.dago.submit(map_run(BIG_MAP, concurrency=200))).graph_id
    page = await console.browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.add_init_script(FRAME_PROBE)
    try:
        await page.goto(console.url(f"#/runs/{gid}/nodes/each"))
        done = '#map-bars [data-map="each"] [data-count="completed"]'
        await page.wait_for_function(f"+document.querySelector('{done}')?.textContent > 0")
        seen = [await page.inner_text(done)]
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=60_000)
        await page.wait_for_function(
            f"document.querySelector('{done}').textContent === '{BIG_MAP}'"
        )
        rows = '[data-items="each"] tbody tr[data-item]'
        await page.wait_for_selector(rows)
        assert await page.eval_on_selector_all(rows, "r => r.length") == 50
        # The map node's attempt: its output (one per item) folded, not drawn.
        await page.wait_for_selector('[data-panel="each"] .lazy-output')
        assert await page.eval_on_selector_all('[data-panel="each"] .json li', "l => l.length") < 50
        m = await page.evaluate(
            """() => ({
              frames: window.__frames.splice(0), longTasks: window.__longTasks.splice(0),
              updates: performance.getEntriesByName('graph-update').map(e => e.duration),
            })"""
        )
        slow = sum(1 for f in m["frames"] if f > 50)
        print(
            f"\n{BIG_MAP}-item map: first count seen {seen[0]}; "
            f"state updates {spread(m['updates'])}"
            f"\n  frames {spread(m['frames'])}, {slow} over 50 ms; long tasks "
            f"{spread(m['longTasks'])}, total {sum(m['longTasks']):.0f} ms"
        )
        await page.click('[data-items="each"] [data-items-next]')
        await page.wait_for_selector(f'{rows}[data-item="50"]')
        await shot(page, f"console-map-{BIG_MAP}.png")
        assert errors == []
    finally:
        await page.close()
