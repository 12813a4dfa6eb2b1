"""A FastAPI app that hands slow work to asyncjobs and answers at once.

    pip install -e ".[fastapi]" uvicorn              # in a clone of asyncjobs
    uvicorn examples.fastapi_app:app                  # the web app
    asyncjobs worker examples.fastapi_app:worker      # the worker (another terminal)

    curl -X POST 'localhost:8000/reports?rows=3000'   # 202 {"job_id": "..."}
    curl localhost:8000/jobs/<job_id>                 # status, progress, result or error
    curl localhost:8000/health                        # 503 when no worker is alive
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

import asyncjobs
from asyncjobs import Context, JobState
from asyncjobs.fastapi import PoolDep, health, lifespan


@asyncjobs.task(timeout=120)
async def build_report(ctx: Context, rows: int) -> dict[str, int]:
    for step in range(1, 11):
        await asyncio.sleep(0.05)
        await ctx.progress(step / 10, f"{rows * step // 10} of {rows} rows")
    return {"rows": rows}


worker = asyncjobs.Worker([build_report])
app = FastAPI(lifespan=lifespan())


@app.post("/reports", status_code=202)
async def create_report(rows: int, pool: PoolDep) -> dict[str, str]:
    job = await pool.enqueue(build_report, rows)
    return {"job_id": job.id, "status_url": f"/jobs/{job.id}"}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, pool: PoolDep) -> dict[str, Any]:
    try:
        info = await pool.job(job_id).info()
    except asyncjobs.JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    body: dict[str, Any] = {"job_id": job_id, "status": info.state.value,
                            "attempts": info.attempts}
    if info.progress:
        body["progress"] = {"value": info.progress.value, "message": info.progress.message,
                            "data": info.progress.data}
    if info.state is JobState.COMPLETE:
        body["result"] = info.result
    elif info.error:
        body["error"] = {"type": info.error.type, "message": info.error.message}
    return body


@app.get("/health")
async def healthcheck(pool: PoolDep) -> JSONResponse:
    report = await health(pool, max_waiting=1000)
    return JSONResponse(report.as_dict(), status_code=200 if report.healthy else 503)
