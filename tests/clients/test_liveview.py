"""The live graph view (web/, served by Envoy on /ui/) in a real headless browser: Debian's
Chromium (/usr/bin/chromium) driven by Playwright. The page submits an example over gRPC-Web,
draws the graph, and every node reaches its final state with the streamed model text shown;
a watch cut by an Envoy restart resumes. Screenshots are kept in .artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from dago.api.auth import hash_key, new_key
from dago.v1 import execution_pb2
from dago_client import AsyncDagoClient
from dago_client.graphfile import parse_document
from harness import (
    ROOT,
    ProcessStack,
    child_logs,
    echo,
    edge,
    envoy_config,
    port_open,
    request,
    start_api_quickly,
    start_envoy,
    tool,
)
from redisfixture import RedisServer

# Chromium on the page Envoy serves, in front of API and worker processes.
pytestmark = [pytest.mark.edge, pytest.mark.process]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / ".artifacts"
FINAL = {"completed", "failed", "skipped", "cancelled"}


@dataclass
class View:
    """A stack with Envoy serving the page, and a browser."""

    stack: ProcessStack
    config: Path
    port: int
    browser: Browser
    envoy: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ui/"

    def restart_envoy(self) -> None:
        self.envoy.kill()
        self.envoy.wait(10)
        self.envoy = start_envoy(self.config, self.stack.logs / "envoy.log")


def check_prerequisites() -> None:
    bundle = ROOT / "web" / "dist" / "app.js"
    assert bundle.exists(), f"{bundle} is missing: `make setup` (or `make web`) builds it"
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
async def serving(redis_url: str, browser: Browser, **env: str) -> AsyncIterator[View]:
    """API + worker + Envoy serving the page (``env``: settings of the API and worker)."""
    stack = ProcessStack(redis_url, f"tui{secrets.token_hex(3)}", DAGO_HEARTBEAT_MS="300", **env)
    config, port = envoy_config(stack, web_root=str(ROOT / "web"))
    v = View(stack, config, port, browser, start_envoy(config, stack.logs / "envoy.log"))
    try:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        await port_open(port)
        yield v
    finally:
        v.envoy.terminate()
        try:
            v.envoy.wait(10)
        except subprocess.TimeoutExpired:
            v.envoy.kill()
        await stack.close()


@pytest.fixture(scope="module")
async def view(redis_single: RedisServer, browser: Browser) -> AsyncIterator[View]:
    async with serving(redis_single.url, browser) as v:
        yield v


async def open_page(view: View, suffix: str = "") -> Page:
    page = await view.browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(view.url + suffix)
    await page.wait_for_selector("#example option", state="attached")
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def node_states(page: Page) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in await page.query_selector_all("svg [data-node]"):
        out[await n.get_attribute("data-node") or ""] = await n.get_attribute("data-state") or ""
    return out


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def test_every_example_is_offered_and_runs(view: View) -> None:
    """The picker holds every file of examples/ (README: "pick an example"), by file name;
    the ones the other tests do not run complete from it too."""
    for name in ("map_summaries", "subgraph"):
        page = await open_page(view)  # a fresh page: no earlier run's state to mistake
        try:
            offered = await page.eval_on_selector_all(
                "#example option", "os => os.map(o => o.value)"
            )
            assert sorted(offered) == sorted(p.stem for p in (ROOT / "examples").glob("*.json"))
            await page.select_option("#example", name)
            await page.click("#submit")
            await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
            assert page.errors == [], page.errors  # type: ignore[attr-defined]
        finally:
            await page.close()


async def test_submit_an_example_and_watch_it_to_the_end(view: View) -> None:
    page = await open_page(view)
    try:
        await page.select_option("#example", "research")
        await page.click("#submit")
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
        states = await node_states(page)
        assert states == {"strengths": "completed", "risks": "completed", "summary": "completed"}
        # The graph is drawn: a box per node, an arrow per edge.
        assert len(await page.query_selector_all("svg g.edge path")) == 2
        for node in states:
            text = await page.inner_text(f'[data-text="{node}"]')
            assert text.startswith("[offline]"), (node, text)  # the streamed model text
        summary = await page.inner_text("#summary")
        m = re.search(r"tokens (\d+) in / (\d+) out", summary)
        assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, summary
        gid = (await page.input_value("#graph-id")).strip()
        assert page.url.endswith(f"#{gid}") and gid in summary
        log = await page.inner_text("#log")
        assert "graphCompleted" in log and "nodeStarted summary" in log
        assert page.errors == []  # type: ignore[attr-defined]
        await shot(page, "liveview-research.png")
    finally:
        await page.close()


async def test_a_router_example_ends_with_every_node_final(view: View) -> None:
    page = await open_page(view)
    try:
        await page.select_option("#example", "triage")
        await page.click("#submit")
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
        states = await node_states(page)
        assert set(states.values()) <= FINAL and states["triage"] == "completed", states
        assert sorted(states.values()).count("completed") == 2, states  # router + one reply
        note = await page.inner_text('[data-note="triage"]')
        assert "route billing" in note, note
        await shot(page, "liveview-triage.png")
    finally:
        await page.close()


async def test_the_page_resumes_after_the_proxy_drops_the_stream(view: View) -> None:
    # s1 runs for a while: Envoy is restarted while the page is following it.
    nodes = [tool(f"s{i}", "sleep", inputs={"seconds": 4 if i == 1 else 0.2}) for i in range(3)]
    edges = [edge("s0", "s1"), edge("s1", "s2")]
    async with AsyncDagoClient(f"127.0.0.1:{view.stack.port}") as dago:
        gid = (await dago.submit(request(nodes, edges))).graph_id
        page = await open_page(view, f"#{gid}")
        try:
            await page.wait_for_selector('[data-node="s1"][data-state="running"]', timeout=20_000)
            view.restart_envoy()  # every stream through Envoy breaks
            running = await dago.status(gid)
            assert running.state == execution_pb2.GRAPH_STATE_RUNNING, "the run ended too soon"
            await port_open(view.port)
            await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
            assert set((await node_states(page)).values()) == {"completed"}
            log = await page.inner_text("#log")
            assert "-- resumed after seq" in log, log
            seqs = [int(line.split()[0]) for line in log.splitlines() if line[:1].isdigit()]
            assert seqs == list(range(1, len(seqs) + 1)), log  # once each, in order
            await shot(page, "liveview-resumed.png")
        except Exception as e:
            raise AssertionError(f"{e}\n{child_logs(view.stack)}") from e
        finally:
            await page.close()


def review_graph(name: str = "review") -> object:
    """draft (echo) -> review (a wait: approve / reject) -> publish on approve, drop on reject."""
    nodes = [
        echo("draft", text="hello {{ inputs.who }}"),
        {
            "id": "review",
            "wait": {
                "prompt": "Publish {{ nodes.draft.output.text }}?",
                "display": {"draft": "{{ nodes.draft.output.text }}"},
            },
        },
        echo("publish", by="{{ nodes.review.output.actor }}"),
        echo("drop", why="{{ nodes.review.output.decision }}"),
    ]
    edges = [
        edge("draft", "review"),
        edge("review", "publish", 'nodes.review.output.decision == "approve"'),
        edge("review", "drop", 'nodes.review.output.decision == "reject"'),
    ]
    return request(nodes, edges, inputs={"who": "world"}, name=name)


async def test_a_map_shows_its_bar_and_a_child_run_links_both_ways(view: View) -> None:
    doc = {
        "name": "bars",
        "nodes": {
            "each": {
                "map": {
                    "items": "[1, 2, 3, 4, 5]",
                    "max_concurrency": 2,
                    "node": {"tool": "echo", "inputs": {"v": "{{ item }}"}},
                }
            },
            "inner": {
                "subgraph": {"graph": {"name": "kid", "nodes": {"a": {"tool": "echo"}}}},
                "inputs": {"x": 1},
            },
        },
    }
    async with AsyncDagoClient(f"127.0.0.1:{view.stack.port}") as dago:
        gid = (await dago.submit(parse_document(doc))).graph_id
        st = await dago.wait(gid)
    child = next(n.child_graph_id for n in st.nodes if n.node_id == "inner")
    page = await open_page(view, f"#{gid}")
    try:
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
        bar = await page.wait_for_selector('progress[data-map="each"]')
        assert bar is not None
        assert await bar.evaluate("b => [b.value, b.max]") == [5, 5]
        note = await page.inner_text('[data-note="each"]')
        assert "items 5/5 · completed 5 · failed 0" in note, note
        link = await page.wait_for_selector('a[data-child="inner"]')
        assert link is not None and await link.inner_text() == child
        await shot(page, "liveview-map-child.png")
        await link.click()
        parent = await page.wait_for_selector(f'#parent[data-parent="{gid}"]', timeout=15_000)
        assert parent is not None
        assert "child run of" in await page.inner_text("#summary")
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=15_000)
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_a_waiting_node_shows_its_prompt_and_approve_completes_the_run(view: View) -> None:
    async with AsyncDagoClient(f"127.0.0.1:{view.stack.port}") as dago:
        gid = (await dago.submit(review_graph())).graph_id
        page = await open_page(view, f"#{gid}")
        try:
            approve = '[data-decide="review"] button[data-decision="approve"]'
            await page.wait_for_selector(approve, timeout=20_000)
            await page.wait_for_selector('svg [data-node="review"][data-state="waiting"]')
            prompt = await page.inner_text('[data-decide="review"] .decide-prompt')
            assert prompt == "Publish hello world?", prompt
            assert '"draft": "hello world"' in await page.inner_text(
                '[data-decide="review"] .decide-display'
            )
            labels = await page.eval_on_selector_all(
                '[data-decide="review"] button', "bs => bs.map(b => b.textContent)"
            )
            assert labels == ["approve", "reject"], labels
            assert (
                await page.get_attribute('[data-decide="review"] .decide-status', "aria-live")
                == "polite"
            )
            await shot(page, "liveview-waiting.png")
            # Keyboard: the button is reachable and pressing Enter on it sends the decision.
            await page.focus(approve)
            await page.keyboard.press("Enter")
            await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
            status = '[data-decide="review"] .decide-status'
            await page.wait_for_function(
                f"document.querySelector('{status}').textContent.startsWith('decided: approve')"
            )
            assert await page.is_disabled(approve)
            assert await page.get_attribute(approve, "aria-pressed") == "true"
            st = await dago.status(gid)
            states = {n.node_id: n.state for n in st.nodes}
            assert states["publish"] == execution_pb2.NODE_STATE_COMPLETED, states
            assert states["drop"] == execution_pb2.NODE_STATE_SKIPPED, states
            assert "signalReceived review" in await page.inner_text("#log")
            assert page.errors == []  # type: ignore[attr-defined]
            await shot(page, "liveview-approved.png")
        except Exception as e:
            raise AssertionError(f"{e}\n{child_logs(view.stack)}") from e
        finally:
            await page.close()


async def test_a_wait_ended_by_a_cancel_turns_its_buttons_off(view: View) -> None:
    async with AsyncDagoClient(f"127.0.0.1:{view.stack.port}") as dago:
        gid = (await dago.submit(review_graph("review-cancelled"))).graph_id
        page = await open_page(view, f"#{gid}")
        try:
            approve = '[data-decide="review"] button[data-decision="approve"]'
            await page.wait_for_selector(approve, timeout=20_000)
            assert not await page.is_disabled(approve)
            await dago.cancel(gid, "nobody answered")
            await page.wait_for_selector('#run-state[data-state="cancelled"]', timeout=20_000)
            status = await page.inner_text('[data-decide="review"] .decide-status')
            assert status == "not decided: the run cancelled", status
            assert await page.is_disabled(approve)
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            await page.close()


async def test_the_approval_example_edited_with_a_payload_publishes_the_edit(view: View) -> None:
    page = await open_page(view)
    try:
        await page.select_option("#example", "approval")
        await page.click("#submit")
        edit = '[data-decide="review"] button[data-decision="edit"]'
        await page.wait_for_selector(edit, timeout=20_000)
        prompt = '[data-decide="review"] .decide-prompt'
        assert (await page.inner_text(prompt)).endswith("(draft first)")
        # Reject with a comment: the model revises, and the node waits again (iteration 2).
        await page.fill('[data-decide="review"] input.decide-comment', "shorter, please")
        await page.click('[data-decide="review"] button[data-decision="reject"]')
        await page.wait_for_function(
            f"document.querySelector('{prompt}')?.textContent.endsWith('(draft revised)')",
            timeout=20_000,
        )
        assert "iteration 2" in await page.inner_text('[data-decide="review"] .decide-meta')
        assert not await page.is_disabled(edit)
        payload = '[data-decide="review"] textarea'
        # Not JSON: refused here; JSON the schema refuses: the server's field violation.
        await page.fill(payload, "{text: 1}")
        await page.click(edit)
        await page.wait_for_selector(f'{payload}[aria-invalid="true"]')
        assert "not valid JSON" in await page.inner_text('[data-decide="review"] .decide-error')
        await page.fill(payload, '{"text": ""}')
        await page.click(edit)
        await page.wait_for_function(
            "document.querySelector('[data-decide=\"review\"] .decide-error')"
            ".textContent.startsWith('payload: ')"
        )
        await shot(page, "liveview-approval-refused.png")
        await page.fill(payload, '{"text": "Wait nodes are here."}')
        await page.click(edit)
        await page.wait_for_selector('#run-state[data-state="completed"]', timeout=20_000)
        gid = (await page.input_value("#graph-id")).strip()
        async with AsyncDagoClient(f"127.0.0.1:{view.stack.port}") as dago:
            result = await dago.result(gid)
        assert result.output["published"] == "Wait nodes are here.", result.output
        assert result.output["edited"] is True
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await page.close()


async def test_with_authentication_the_page_sends_the_key_typed_in(
    redis_single: RedisServer, browser: Browser
) -> None:
    key = new_key()
    keys = f"{hash_key(key)}:team-ui"
    async with serving(redis_single.url, browser, DAGO_AUTH="keys", DAGO_API_KEYS=keys) as v:
        page = await open_page(v)
        try:
            await page.select_option("#example", "diamond")
            await page.click("#submit")
            await page.wait_for_function(
                "document.getElementById('error').textContent.length > 0", timeout=20_000
            )
            assert "authorization" in (await page.inner_text("#error")).lower()
            await page.fill("#api-key", key)
            await page.click("#submit")
            await page.wait_for_selector('#run-state[data-state="completed"]', timeout=30_000)
            assert set((await node_states(page)).values()) == {"completed"}
            assert await page.evaluate("sessionStorage.getItem('dago.apiKey')") == key
        finally:
            await page.close()


async def test_ui_routes(view: View) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{view.port}") as http:
        for path in ("/ui", "/"):  # the bare origin opens the live view too
            r = await http.get(path)
            assert r.status_code in (301, 302) and r.headers["location"].endswith("/ui/"), path
        r = await http.get("/ui/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="app.js">' in r.text
        r = await http.get("/ui/app.js")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert len(r.content) > 10_000
        # The API routes are untouched.
        assert (await http.get("/api/v1/graphs")).status_code == 200
    await asyncio.sleep(0)
