"""The HTTP routes of ``hlip serve`` (FastAPI); the work is :class:`~hlip_engine.serve.engine.Engine`'s.

Every route but ``/v1/health`` needs ``Authorization: Bearer TOKEN``. A study is sent either as the
request body (``application/zip``: its DICOM/NIfTI files) or as JSON ``{"study_uid": ...}`` naming a study
of the index (or of ``--pacs``). A client never names a server path: the JSON models forbid extra keys, so
``{"path": "/etc/passwd"}`` is a 422. Every client mistake is a 4xx with ``{"detail": "one line"}``.
``GET /v1/studies/{study_uid}`` sends a study of the index back as its files (a zip, streamed), so that a
search hit, whose ``path`` is a folder on the server, opens on the client; the UID is a key of the index only.
"""
from __future__ import annotations

import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine
from .errors import ClientError
from .uploads import ZIP_TYPES, AnswerBeforeClose, UploadFolder, receive_body

log = logging.getLogger("hlip.serve")
MAX_JSON_BYTES = 1 << 20
UID_PATTERN = r"^[0-9A-Za-z.\-_]+$"
Text = Annotated[str, StringConstraints(max_length=2000)]  # one prompt or template in a query string


class StudyRequest(BaseModel):
    """A study of the server's index (or of its PACS), by StudyInstanceUID."""

    model_config = ConfigDict(extra="forbid")
    study_uid: str = Field(min_length=1, max_length=128, pattern=UID_PATTERN)


class SearchRequest(BaseModel):
    """Free text, or "more like" a study of the index; ``k`` best studies, optionally filtered."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, max_length=2000)
    study_uid: str | None = Field(None, min_length=1, max_length=128, pattern=UID_PATTERN)
    k: int = Field(10, ge=1, le=1000)
    modality: str | list[str] | None = Field(None, description="one modality or a list (MR, CT, ...)")
    date_from: str | None = Field(None, max_length=10, description="2024-03-01 or 20240301 (inclusive)")
    date_to: str | None = Field(None, max_length=10)
    plain: bool = Field(False, description="rank by plain cosine (no centring on typical queries)")

    @model_validator(mode="after")
    def _one_query(self):
        if (self.text is None) == (self.study_uid is None):
            raise ValueError("give either text or study_uid (not both, not neither)")
        return self


def _schema(model: type[BaseModel]) -> dict:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def _study_body(extra_json: type[BaseModel] = StudyRequest) -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _schema(extra_json)},
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
    }}}


def _one_line_validation(errors: list[dict]) -> str:
    parts = []
    for e in errors[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",)) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return " ".join(("; ".join(parts) + more).split())


async def _read_json(request: Request, model: type[BaseModel]):
    size = 0
    raw = bytearray()
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise ClientError(413, f"JSON body over {MAX_JSON_BYTES >> 10} KB")
        raw += chunk
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as e:
        errors = e.errors()
        if errors and errors[0].get("type") == "json_invalid":
            raise ClientError(400, f"malformed JSON: {errors[0].get('msg')}") from None
        raise ClientError(422, _one_line_validation(errors)) from None


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="HLIP Explorer engine", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Search, zero-shot classification, relevance maps and embeddings of 3-D studies "
                              "(research use only, not for diagnosis).")
    app.state.engine = engine
    app.add_middleware(AnswerBeforeClose, limit_bytes=engine.config.max_upload_bytes)  # 401s reach uploaders
    token = engine.config.token.encode()

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise ClientError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                              headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]

    @app.exception_handler(ClientError)
    async def _client_error(_request, exc: ClientError):
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line_validation(list(exc.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def study_source(request: Request) -> tuple[str, Any]:
        """The request's study: ("uid", StudyInstanceUID) or ("upload", UploadFolder holding upload.zip)."""
        kind = _content_type(request)
        if kind == "application/json":
            return "uid", (await _read_json(request, StudyRequest)).study_uid
        if kind in ZIP_TYPES:
            folder = UploadFolder(engine.config.tmp_dir)
            try:
                await receive_body(request.stream(), folder.zip_path, engine.config.max_upload_bytes,
                                   request.headers.get("content-length"))
            except BaseException:
                folder.cleanup()
                raise
            return "upload", folder
        raise ClientError(415, f"send the study as application/zip or JSON {{\"study_uid\": ...}}, "
                               f"not {kind or 'no Content-Type'}")

    async def with_study(request: Request, run):
        """Admission, the study, the job, and the upload's deletion whatever happens."""
        with engine.admit():
            source = await study_source(request)
            try:
                return await run(source)
            finally:
                if source[0] == "upload":
                    source[1].cleanup()

    # --- routes --------------------------------------------------------------------------------
    @app.get("/v1/health", tags=["server"])
    async def health() -> dict:
        """Is the server up (no token needed)."""
        return {"status": "ok"}

    @app.get("/v1/info", tags=["server"], dependencies=auth)
    async def info() -> dict:
        """The model (name, architecture, embedding size, recipe, fingerprint) and the index (size, model)."""
        return engine.info()

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi() -> dict:
        return app.openapi()

    @app.get("/v1/studies/{study_uid}", tags=["studies"], dependencies=auth, response_class=StreamingResponse,
             responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the study's DICOM/NIfTI files as stored, under their names "
                                             "relative to the study's folder"},
                        404: {"description": "the UID is not in the index, or its files cannot be had"}})
    async def study(study_uid: Annotated[str, Path(min_length=1, max_length=128, pattern=UID_PATTERN,
                                                   description="StudyInstanceUID of a study of the index")]):
        """An indexed study's files as a zip (streamed), so that a search hit opens on the client."""
        from .downloads import zip_stream

        name, files = await engine.on_prep(engine.study_download, study_uid)
        return StreamingResponse(zip_stream(files), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/v1/search", tags=["questions"], dependencies=auth, openapi_extra=_study_body(SearchRequest))
    async def search(request: Request,
                     k: Annotated[int, Query(ge=1, le=1000, description="uploads only: how many")] = 10,
                     modality: Annotated[list[str] | None, Query(max_length=16)] = None,
                     date_from: Annotated[str | None, Query(max_length=10)] = None,
                     date_to: Annotated[str | None, Query(max_length=10)] = None) -> dict:
        """The ``hlip search --json`` document. JSON body: text or study_uid; a zip body: studies like it."""
        if _content_type(request) in ZIP_TYPES:
            filters = {"modality": modality or None, "date_from": date_from, "date_to": date_to}
            return await with_study(request, lambda source: engine.search_like(source, k, filters))
        if _content_type(request) != "application/json":
            raise ClientError(415, "send the query as JSON (or a study as application/zip)")
        body = await _read_json(request, SearchRequest)
        filters = {"modality": body.modality, "date_from": body.date_from, "date_to": body.date_to}
        return await engine.search(text=body.text, study_uid=body.study_uid, k=body.k, filters=filters,
                                   plain=body.plain)

    @app.post("/v1/zeroshot", tags=["questions"], dependencies=auth, openapi_extra=_study_body())
    async def zeroshot(request: Request,
                       prompt: Annotated[list[Text] | None, Query(max_length=32, description="one class each")] = None,
                       prompt_set: Annotated[str | None, Query(max_length=64)] = None,
                       classes: Annotated[str | None, Query(max_length=16384, description=(
                           'JSON {"class": ["phrasing", ...]} or, with mode=binary, {"class": ["negative", '
                           '"positive"]}'))] = None,
                       template: Annotated[list[Text] | None, Query(max_length=16)] = None,
                       mode: Annotated[str | None, Query(pattern="^(softmax|binary)$")] = None,
                       template_set: Annotated[str | None, Query(max_length=64)] = None) -> dict:
        """The ``hlip zeroshot --json`` document (``probabilities``) for the study in the body; without
        prompt, prompt_set or classes, the model's default prompt set for the study."""
        spec = _classifier_spec(prompt, prompt_set, classes, template, mode, template_set)
        return await with_study(request, lambda source: engine.zeroshot(source, spec))

    @app.post("/v1/relevance", tags=["questions"], dependencies=auth, openapi_extra=_study_body(),
              responses={200: {"content": {"application/zip": {}}, "description": (
                  "a zip: relevance.json (scan_importance, peak_slices, peak, nifti, scans) and one "
                  "NIfTI per scan on that scan's own voxel grid, plus tokens.npy")}})
    async def relevance_route(request: Request,
                              prompt: Annotated[list[Text], Query(min_length=1, max_length=16)],
                              template: Annotated[list[Text] | None, Query(max_length=16)] = None,
                              method: Annotated[str | None, Query(max_length=32)] = None,
                              output: Annotated[int, Query(ge=0, le=1)] = 0) -> Response:
        """Relevance maps of the prompt on the study (``hlip relevance``'s NIfTI files and JSON, zipped)."""
        from hlip_engine.relevance import check_method

        phrases = [p for p in prompt if p.strip()]
        if not phrases or any(len(p) > 2000 for p in phrases):
            raise ClientError(422, "prompt: give the finding to localise (1-2000 characters)")
        if method is not None:
            try:
                check_method(method)
            except ValueError as e:
                raise ClientError(422, str(e)) from None
        if template and any("{}" not in t and "{c}" not in t for t in template):
            raise ClientError(422, "template: each needs a '{}' where the prompt goes")
        text = phrases[0] if len(phrases) == 1 else phrases
        data = await with_study(request, lambda source: engine.relevance(source, text, template or None, method,
                                                                        output))
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="relevance.zip"'})

    @app.post("/v1/report", tags=["questions"], dependencies=auth, openapi_extra=_study_body(),
              responses={200: {"content": {"application/zip": {}}, "description": (
                  "a zip: hlip_sr.dcm (TID 1500 SR), one hlip_map_*.dcm Parametric Map per relevance prompt "
                  "and source series, report.json")}})
    async def report_route(request: Request,
                           prompt_set: Annotated[str | None, Query(max_length=64)] = None,
                           relevance: Annotated[list[Text] | None, Query(max_length=16)] = None,
                           method: Annotated[str | None, Query(max_length=32)] = None,
                           send: bool = False) -> Response:
        """``hlip report``'s DICOM objects of the study (research results, UNVERIFIED), zipped; ``send``
        stores them on the server's own PACS node (``--pacs``)."""
        phrases = [p for p in relevance or [] if p.strip()]
        if prompt_set is None and not phrases:
            raise ClientError(422, "give prompt_set, relevance prompts, or both")
        data = await with_study(request, lambda source: engine.report(source, prompt_set, phrases, method, send))
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="hlip_report.zip"'})

    @app.post("/v1/embed", tags=["questions"], dependencies=auth, openapi_extra=_study_body())
    async def embed(request: Request) -> dict:
        """The study's L2-normalised embedding (what ``hlip embed`` prints), with the model's name and recipe."""
        return await with_study(request, engine.embed)

    from hlip_engine.triage.stow import add_stow_routes

    add_stow_routes(app, auth, engine.config)  # STOW-RS into the listener's spool (hlip listen)
    return app


def _classifier_spec(prompt, prompt_set, classes, template, mode, template_set) -> dict:
    given = [x for x in (prompt, prompt_set, classes) if x]
    if len(given) > 1:  # none: the model's default prompt set for the study
        raise ClientError(422, "give prompts: prompt=A&prompt=B, prompt_set=NAME or classes={json} (one of them, "
                               "or none for the model's default set)")
    if prompt is not None and any(not p.strip() or len(p) > 2000 for p in prompt):
        raise ClientError(422, "prompt: each must be 1-2000 characters of text")
    prompts: Any = prompt
    if classes is not None:
        try:
            prompts = json.loads(classes)
        except ValueError as e:
            raise ClientError(422, f"classes is not JSON: {e}") from None
        ok = isinstance(prompts, dict) and prompts and all(
            isinstance(k, str) and (isinstance(v, str) or (isinstance(v, list) and v and all(
                isinstance(p, str) and 0 < len(p) <= 2000 for p in v))) for k, v in prompts.items())
        if not ok:
            raise ClientError(422, 'classes must be {"class": "prompt" | ["phrasing", ...]}')
        if mode == "binary":
            prompts = {c: tuple(v) if isinstance(v, list) else v for c, v in prompts.items()}
    if template is not None and any("{}" not in t and "{c}" not in t for t in template):
        raise ClientError(422, "template: each needs a '{}' where the class goes")
    return {"prompt_set": prompt_set, "prompts": prompts, "templates": template, "mode": mode,
            "template_set": template_set}
