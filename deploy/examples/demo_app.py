"""The demo's sample upstream: a FastAPI service that trusts only Gatehouse's assertion.

Run by ``gatehouse demo`` under uvicorn; GATEHOUSE_URL and GATEHOUSE_AUDIENCE
tell ``assertion_verify`` which issuer and audience to expect.
"""

from typing import Any

from assertion_verify import gatehouse_caller
from fastapi import Depends, FastAPI, Request

app = FastAPI(title="Gatehouse demo upstream")


@app.get("/public/hello")
def hello(request: Request) -> dict[str, Any]:
    return {
        "message": "hello from the sample upstream",
        "request_id": request.headers.get("x-request-id"),
    }


@app.get("/api/whoami")
def whoami(request: Request, caller: dict[str, Any] = Depends(gatehouse_caller)) -> dict[str, Any]:
    """What the upstream learned about the caller, from the verified assertion only."""
    return {
        "subject": caller["sub"],
        "email": caller.get("email"),
        "groups": caller.get("groups", []),
        "issuer": caller["iss"],
        "request_id": request.headers.get("x-request-id"),
        "traceparent": request.headers.get("traceparent"),
    }
