"""The gateway's pages for people: the editor at /, the API's documentation at /docs (Swagger UI) and
/redoc. Every file they load is one the gateway ships, and each page's Content-Security-Policy lets
the browser load nothing from anywhere else: they work on a machine without internet (a cluster
behind a firewall, these build machines) and call no third party.

FastAPI's own documentation pages load Swagger UI and ReDoc from a CDN (a blank /docs offline); here:

- Swagger UI from the PyPI package ``swagger-ui-bundle-v2`` (Swagger UI's dist files, maintained with
  connexion): an ordinary dependency, installed from the registry like the rest. Not
  ``swagger-ui-bundle``: its newest release ships Swagger UI 4.15, which cannot render the OpenAPI 3.1
  documents FastAPI writes.
- ReDoc vendored into this package (``vendor/redoc``: npm ``redoc`` 2.5.4's ``bundles/redoc.standalone.js``
  with its licences; ``scripts/vendor-redoc.sh`` fetches it again and checks its digest). No package
  from ReDoc's authors is on PyPI, and the gateway installs with pip alone (``pip install ./gateway``,
  its Docker image): an npm step at install time would break that, so the one 1 MB file travels with
  the package instead. Its side menu shows Redocly's logo from their CDN; the policy blocks that
  request and ReDoc then leaves the logo out.

URLs are relative, as the editor's are, so the pages also work under an Ingress path prefix
(``/api/docs`` loads ``/api/openapi.json``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"  # the browser editor
REDOC = HERE / "vendor" / "redoc"
SWAGGER_ASSETS, REDOC_ASSETS = "/docs-assets/swagger-ui", "/docs-assets/redoc"

# 'self' only. The editor: its images are data: (previews) and blob: (results) URLs it makes itself.
EDITOR_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                 "form-action 'self'")
# The documentation pages: FastAPI's pages start Swagger UI with an inline script, both UIs inject their
# styles, and ReDoc's search runs in a worker it makes from a blob.
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'")


def _policy(response, policy: str):
    response.headers["Content-Security-Policy"] = policy
    return response


def add_pages(app: FastAPI, title: str) -> None:
    """/ (the editor), /docs and /redoc on ``app`` (created with ``docs_url=None, redoc_url=None``), with
    their files."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    app.mount(REDOC_ASSETS, StaticFiles(directory=str(REDOC)), name="redoc")
    # From /docs, "docs-assets/..." resolves next to it, whatever prefix a proxy adds in front.
    swagger, redoc = SWAGGER_ASSETS.lstrip("/"), REDOC_ASSETS.lstrip("/")
    icon = f"{swagger}/favicon-32x32.png"

    @app.get("/", include_in_schema=False)
    async def editor() -> FileResponse:
        """The browser editor (static files; no build step)."""
        return _policy(FileResponse(STATIC / "index.html"), EDITOR_POLICY)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        # validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io.
        page = get_swagger_ui_html(openapi_url="openapi.json", title=f"{title} - API", swagger_favicon_url=icon,
                                   swagger_js_url=f"{swagger}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{swagger}/swagger-ui.css",
                                   swagger_ui_parameters={"validatorUrl": None})
        return _policy(page, DOCS_POLICY)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        page = get_redoc_html(openapi_url="openapi.json", title=f"{title} - API", redoc_favicon_url=icon,
                              redoc_js_url=f"{redoc}/redoc.standalone.js", with_google_fonts=False)
        return _policy(page, DOCS_POLICY)
