"""The backend a user builds from deploy/examples/assertion_verify.py (run under uvicorn)."""

from typing import Annotated, Any

from assertion_verify import gatehouse_caller  # type: ignore[import-not-found,unused-ignore]
from fastapi import Depends, FastAPI

app = FastAPI()


@app.get("/api/whoami")
def whoami(caller: Annotated[dict[str, Any], Depends(gatehouse_caller)]) -> dict[str, Any]:
    return caller
