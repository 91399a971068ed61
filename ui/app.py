"""Streamlit front end: type words or drop a photo, see matching products, ask for more like one of them, and
see "recommended for you" from what this shopper clicked and put in the cart (a shopper id in the sidebar
records those as events with a write key; without one, the page's own session is the history).

An HTTP client of the service (``python -m pipeline serve``): ``PIPELINE__API__URL`` (default: the service
announced beside the data, else http://127.0.0.1:8000) and ``PIPELINE__API__KEY`` (default: the local token
of a service on this machine). ``make demo`` starts both.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import streamlit as st

from pipeline.catalog import is_url
from pipeline.client import DEFAULT_URL, ServiceClient
from pipeline.config import Settings
from pipeline.errors import Forbidden, PipelineError
from pipeline.schemas import SearchFilters, SearchResponse

st.set_page_config(page_title="Product search", layout="wide")


@st.cache_resource(show_spinner=False)
def client() -> ServiceClient:
    found = ServiceClient.discover(Settings(), default=DEFAULT_URL)
    assert found is not None  # a default URL always gives a client
    return found


@st.cache_data(ttl=10, show_spinner=False)
def facets() -> dict[str, list[Any]]:
    try:
        return client().get("/v1/facets")
    except PipelineError:
        return {}


@st.cache_data(ttl=5, show_spinner=False)
def status() -> dict[str, Any]:
    return client().get("/health")


def start_text_query() -> None:
    st.session_state.mode = "text"


def start_image_query() -> None:
    st.session_state.mode = "image" if st.session_state.get("photo") is not None else "text"


def more_like(product_id: str, name: str, query_id: str | None = None) -> None:
    st.session_state.mode = "product"
    st.session_state.product_id = product_id
    st.session_state.product_name = name
    interact(product_id, "click", query_id)


def interact(product_id: str, kind: str, query_id: str | None = None) -> None:
    """A click or an add-to-cart: into this page's session, and as an event of the shopper when one is named.
    A click on a search result names its answer (``query_id``): recorded even with no shopper named, it is a
    training pair for the model and a click-through for the generation that answered."""
    st.session_state.setdefault("session", []).append({"product_id": product_id, "type": kind})
    buyer = (st.session_state.get("buyer") or "").strip()
    st.session_state.event_note = None
    if buyer or query_id:
        event = {"product_id": product_id, "type": kind, **({"buyer_id": buyer} if buyer else {}),
                 **({"query_id": query_id} if query_id else {})}  # fmt: skip
        try:
            client().post("/v1/events", {"events": [event]})
        except Forbidden:
            st.session_state.event_note = "Events are recorded with a key of write scope; using this page's session."
            if buyer and query_id:  # a search key still records the click on the answer, without the shopper
                with contextlib.suppress(PipelineError):
                    anonymous = {k: v for k, v in event.items() if k != "buyer_id"}
                    client().post("/v1/events", {"events": [anonymous]})
        except PipelineError as exc:
            st.session_state.event_note = f"The event was not recorded: {exc}"


def clear_session() -> None:
    st.session_state.session = []


def sidebar() -> tuple[int, SearchFilters]:
    with st.sidebar:
        st.header("Filters")
        options = facets()
        top_k = st.slider("Results", 4, 48, 12, step=4, key="top_k")
        category = st.selectbox("Category", ["Any", *options.get("category", [])], key="category")
        brand = st.selectbox("Brand", ["Any", *options.get("brand", [])], key="brand")
        color = st.selectbox("Colour", ["Any", *options.get("color", [])], key="color")
        lo, hi = options.get("price", [0.0, 0.0]) or [0.0, 0.0]
        price = (lo, hi)
        if hi > lo:
            price = st.slider("Price", float(lo), float(hi), (float(lo), float(hi)), key="price")
        st.divider()
        st.header("Shopper")
        st.text_input("Shopper id", key="buyer", placeholder="e.g. buyer-42 (optional)")
        session = st.session_state.get("session", [])
        st.caption(f"This session: {len(session)} interaction(s)")
        st.button("Clear session", key="clear-session", on_click=clear_session, disabled=not session)
        st.divider()
        show_status()
        show_models()
        show_jobs()
    pick = {k: (v if v != "Any" else None) for k, v in (("category", category), ("brand", brand), ("color", color))}
    bounds = {"min_price": price[0], "max_price": price[1]} if hi > lo and price != (lo, hi) else {}
    return top_k, SearchFilters(**pick, **bounds)


def show_status() -> None:
    st.header("System")
    try:
        s = status()
    except PipelineError as exc:
        st.error(f"Status unavailable: {exc}")
        return
    model, parts = s["model"], s["components"]
    backend = "Triton (gRPC)" if model["backend"] == "triton" else "in-process (onnxruntime)"
    st.markdown(f"**Encoder**: {backend}, {model['precision'].upper()}  \n**Model**: `{model['name']}`")
    qd, mg = parts.get("qdrant", {}), parts.get("mongo", {})

    def health(part: dict[str, Any]) -> str:
        return ":green[● up]" if part.get("status") == "ok" else ":red[● down]"

    st.markdown(
        f"**Service**: {client().url}  \n"
        f"**Qdrant** ({qd.get('backend', '?')}): {health(qd)}, {qd.get('points', '—')} vectors  \n"
        f"**MongoDB**: {health(mg)}, {mg.get('products', '—')} products"
    )
    cache = s["cache"]
    st.caption(f"Cache: {cache['entries']}/{cache['max_entries']} entries, hit rate {cache['hit_rate']:.0%}")


@st.cache_data(ttl=10, show_spinner=False)
def models() -> dict[str, Any]:
    return client().get("/v1/models")


def show_models() -> None:
    """The active model version beside the previous one (live: queries, CTR@10, top-1 similarity) and the
    candidates' validation figures."""
    with st.expander("Model versions", expanded=False):
        try:
            doc = models()
        except PipelineError as exc:
            st.caption(f"Model versions unavailable: {exc}")
            return
        live = doc.get("live", {})

        def num(value: Any, fmt: str) -> str:
            return "—" if value is None else format(value, fmt)

        lines = [
            "| version | status | queries | CTR@10 | top-1 sim. | held-out MRR |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        notes = []
        for v in reversed(doc["versions"]):  # newest first
            figures = live.get(v["version"], {})
            valid = (v.get("validation") or {}).get("all", {}).get("candidate", {})
            name = f"**{v['version']}**" if v["version"] == doc["active"] else v["version"]
            cells = [name, v["status"], str(figures.get("queries", 0)), num(figures.get("ctr@10"), ".1%"),
                     num(figures.get("mean_top1_similarity"), ".3f"), num(valid.get("mrr"), ".3f")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
            if v.get("refused"):
                notes.append(f"{v['version']} refused: {v['refused']}")
        st.markdown("\n".join(lines))
        for note in notes:
            st.caption(note)


@st.fragment(run_every=3)
def show_jobs() -> None:
    """Running and recent background jobs, refreshed every few seconds (needs a key with write scope)."""
    with st.expander("Jobs", expanded=False):
        try:
            jobs = client().get("/v1/jobs", limit=8)["jobs"]
        except Forbidden:
            st.caption("Jobs need a key with write scope (PIPELINE__API__KEY).")
            return
        except PipelineError as exc:
            st.caption(f"Jobs unavailable: {exc}")
            return
        if not jobs:
            st.caption("No jobs yet: `python -m pipeline jobs submit ingest --path catalog.jsonl`")
        for job in jobs:
            done, total = job["progress"]["done"], job["progress"]["total"]
            label = f"{job['kind']} · {job['state']} · {done}/{total if total is not None else '?'}"
            if job["state"] in ("running", "queued"):
                st.progress(min(done / total, 1.0) if total else 0.0, text=label)
            else:
                st.caption(label + (f" · {job['message']}" if job.get("message") else ""))


def run_query(top_k: int, filters: SearchFilters) -> SearchResponse | None:
    mode = st.session_state.get("mode")
    text = (st.session_state.get("query") or "").strip()
    photo = st.session_state.get("photo")
    if mode == "product" and st.session_state.get("product_id"):
        pid = st.session_state.product_id
        return client().similar(pid, top_k, filters=filters)
    if mode == "image" and photo is not None:
        return client().search_image(photo.getvalue(), top_k, filters)
    if text:
        return client().search_text(text, top_k, filters)
    return None


def show_image(ref: str) -> None:
    if is_url(ref) or Path(ref).is_file():
        st.image(ref, width="stretch")
    else:
        st.caption("(image unavailable)")


def show_results(response: SearchResponse) -> None:
    what = {"text": "words", "image": "photo", "product": "more like this"}[response.kind]
    cache = {True: "embedding from cache", False: "embedding computed", None: "stored vectors"}[response.cache_hit]
    st.caption(
        f"{len(response.hits)} products for your {what} · {response.timings_ms.get('total', 0):.0f} ms · {cache}"
        + (f" · model {response.generation}" if response.generation else "")
    )
    if response.metadata_missing:
        st.warning("Product details are unavailable right now (database unreachable); showing ids and scores.")
    if not response.hits:
        st.info("No products match. Try other words or fewer filters.")
        return
    columns = st.columns(4)
    for i, hit in enumerate(response.hits):
        with columns[i % 4], st.container(border=True, key=f"card-{i}"):
            product = hit.product
            if product is not None:
                show_image(product.images[(hit.image_index or 0) % len(product.images)])
                st.markdown(f"**{product.name}**")
                price = f"{product.price:.2f}" if product.price is not None else "—"
                st.caption(f"{product.brand or ''} · {price} · score {hit.score:.3f}")
            else:
                st.markdown(f"**{hit.product_id}**")
                st.caption(f"score {hit.score:.3f}")
            name = product.name if product is not None else hit.product_id
            st.button("More like this", key=f"more-{hit.product_id}", on_click=more_like,
                      args=(hit.product_id, name, response.query_id or None))  # fmt: skip
            st.button("Add to cart", key=f"cart-{hit.product_id}", on_click=interact,
                      args=(hit.product_id, "add_to_cart"))  # fmt: skip


def recommendations(filters: SearchFilters) -> dict[str, Any] | None:
    """For the named shopper (their stored events), else for this page's session; None when neither has any."""
    buyer = (st.session_state.get("buyer") or "").strip()
    session = st.session_state.get("session", [])
    params = {k: v for k, v in filters.model_dump().items() if v is not None}
    if buyer and not st.session_state.get("event_note"):
        path = f"/v1/buyers/{quote(buyer, safe='')}/recommendations"
        return client().get(path, top_k=4, exclude="seen", **params)  # not what is already in the cart
    if session:
        body = {"interactions": session[-200:], "top_k": 4, "filters": params or None, "exclude": "seen"}
        return client().post("/v1/recommend", body)
    return None


def show_recommendations(filters: SearchFilters) -> None:
    if st.session_state.get("event_note"):
        st.caption(st.session_state.event_note)
    try:
        found = recommendations(filters)
    except PipelineError as exc:
        st.caption(f"Recommendations unavailable: {exc}")
        return
    if not found or not found["hits"]:
        return
    title = "Recommended for you" if found["strategy"] == "buyer" else "Popular right now"
    st.subheader(title)
    columns = st.columns(4)
    for i, hit in enumerate(found["hits"]):
        product = hit["product"]
        with columns[i % 4], st.container(border=True, key=f"rec-{i}"):
            show_image(product["images"][0])
            st.markdown(f"**{product['name']}**")
            st.caption(hit["reason"])
            st.button("More like this", key=f"rec-more-{hit['id']}", on_click=more_like,
                      args=(hit["id"], product["name"]))  # fmt: skip
    st.divider()


def main() -> None:
    st.title("Product search")
    try:
        status()
    except PipelineError as exc:
        st.error(f"The search service is not reachable: {exc}. Start it with: python -m pipeline serve")
        st.stop()
    top_k, filters = sidebar()
    left, right = st.columns([3, 2])
    with left:
        st.text_input("Search with words", key="query", placeholder="e.g. blue striped t-shirt",
                      on_change=start_text_query)  # fmt: skip
    with right:
        st.file_uploader("…or with a photo", type=["jpg", "jpeg", "png", "webp", "gif", "bmp"], key="photo",
                         on_change=start_image_query)  # fmt: skip
    show_recommendations(filters)
    if st.session_state.get("mode") == "product":
        st.markdown(f"More like **{st.session_state.product_name}** (`{st.session_state.product_id}`)")
    try:
        response = run_query(top_k, filters)
    except PipelineError as exc:
        st.error(str(exc))
        return
    if response is None:
        st.info("Type a few words or drop a photo to search the catalog.")
        return
    show_results(response)


main()
