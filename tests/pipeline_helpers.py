"""Run a real pipeline in-process with a real ZeroMQ subscriber."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from decision_bridge.schema import MaskMessage
from decision_bridge.subscriber import MaskSubscriber
from models.backends.registry import create_backend
from models.store.registry import load_model
from stream.config import PipelineConfig
from stream.pipeline import Pipeline

LOOPBACK_ANY = "tcp://127.0.0.1:0"


def torch_factory(config: PipelineConfig):
    def make():
        model, card = load_model(config.model)
        return create_backend(config.backend, model, card, device="cpu", precision=config.precision,
                              input_size=config.input_size)

    return make


async def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(config: PipelineConfig) -> AsyncIterator[tuple[Pipeline, asyncio.Task]]:
    pipeline = Pipeline(config, torch_factory(config))
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline, task
    finally:
        if not task.done():
            pipeline.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)


async def subscribe(pipeline: Pipeline, task: asyncio.Task) -> MaskSubscriber:
    """Connect a real subscriber once the publisher is bound (the pipeline waits for it)."""
    await wait_for(lambda: pipeline.zmq_address is not None or task.done(), what="publisher bind")
    if task.done():
        task.result()
    assert pipeline.zmq_address is not None
    sub = MaskSubscriber(pipeline.zmq_address)
    sub.connect()
    return sub


async def receive(sub: MaskSubscriber, count: int, timeout_s: float = 60.0) -> list:
    """Collect ``count`` messages without blocking the loop the pipeline runs on."""
    messages: list[MaskMessage] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(messages) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"received {len(messages)} of {count} messages")
        message = sub.recv(timeout_s=0)
        if message is None:
            await asyncio.sleep(0.005)
        else:
            messages.append(message)
    return messages
