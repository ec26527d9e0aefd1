"""Owns the API documentation pages: /docs (Swagger UI) and /redoc (ReDoc), both from vendored assets.

FastAPI's defaults load both from a CDN, which operators' networks often cannot reach; the
assets are package data in web/static/apidocs/ (VENDORED.md says which versions) and served
with the console's static files. Swagger UI 5 is the first to render OpenAPI 3.1, which FastAPI
writes. Like /openapi.json, the pages need no login: they hold the API's shape, no data.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from controlplane.web.console import SECURITY_HEADERS

ASSETS = "/static/console/apidocs"
TITLE = "controlplane API"


def _inline_script_hashes(html: str) -> list[str]:
    """CSP sources for the page's inline scripts (Swagger UI's is its configuration), by their sha256."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts]


def _policy(html: str, *, inline_styles: bool, blob_workers: bool) -> str:
    """The console's policy (web/console.py), with the page's inline scripts allowed by their hash, and inline
    styles and workers made from blobs only for the page that needs them.

    connect-src stays 'self': the pages fetch /openapi.json, and "Try it out" calls this API only.
    img-src stays 'self' data: too, which also stops the "API docs by Redocly" logo that ReDoc loads
    from cdn.redoc.ly (the link's text stays): nothing on these pages leaves this origin.
    """
    scripts = " ".join(["'self'", *_inline_script_hashes(html)])
    styles = "'self' 'unsafe-inline'" if inline_styles else "'self'"
    workers = "; worker-src blob:" if blob_workers else ""
    return (
        f"default-src 'self'; script-src {scripts}; style-src {styles}; img-src 'self' data:; connect-src 'self'; "
        f"base-uri 'none'; form-action 'self'; frame-ancestors 'none'{workers}"
    )


@dataclass(frozen=True)
class DocsPage:
    """One page's HTML and headers, made once: a fresh response per request (middleware adds headers to it)."""

    html: str
    headers: dict[str, str]

    @classmethod
    def of(cls, response: HTMLResponse, *, inline_styles: bool = False, blob_workers: bool = False) -> DocsPage:
        html = bytes(response.body).decode()
        policy = _policy(html, inline_styles=inline_styles, blob_workers=blob_workers)
        return cls(html, {**SECURITY_HEADERS, "Content-Security-Policy": policy})

    def response(self) -> HTMLResponse:
        return HTMLResponse(self.html, headers=self.headers)


def swagger_ui_page(openapi_url: str = "/openapi.json") -> DocsPage:
    return DocsPage.of(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=TITLE,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            # No badge fetched from validator.swagger.io (the BaseLayout shows none, but say it).
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


def redoc_page(openapi_url: str = "/openapi.json") -> DocsPage:
    return DocsPage.of(
        get_redoc_html(
            openapi_url=openapi_url,
            title=TITLE,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon-32x32.png",
            with_google_fonts=False,  # ReDoc falls back to the system's sans-serif
        ),
        # ReDoc styles itself by inserting <style> elements (styled-components), which no hash can cover
        # (without them it renders nothing), and builds its search index in a worker made from a blob.
        inline_styles=True,
        blob_workers=True,
    )


def install(app: FastAPI) -> None:
    """/docs and /redoc; their assets are served with the console's static files (web/console.py)."""
    docs = swagger_ui_page()
    redoc = redoc_page()

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return docs.response()

    @app.get("/redoc", include_in_schema=False)
    def redoc_ui() -> HTMLResponse:
        return redoc.response()
