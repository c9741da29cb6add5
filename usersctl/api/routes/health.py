"""GET /healthz: the only endpoint without a credential."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from usersctl.api.deps import ServerDep
from usersctl.api.schemas import Detail, Health

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Detail, "description": "database unreachable or not at head"}},
    summary="Whether the database is reachable and at the schema head",
)
def healthz(server: ServerDep) -> JSONResponse:
    from usersctl.service import is_current

    if is_current(server.database):
        return JSONResponse({"status": "ok"})
    return JSONResponse({"detail": "database unavailable or not at head"}, status_code=503)
