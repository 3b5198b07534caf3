"""Small handlers for testing the queue, worker and gateway without any model."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from pydantic import BaseModel


class EchoItem(BaseModel):
    text: str
    sleep_s: float = 0.0
    crash: bool = False


class EchoOutput(BaseModel):
    text: str
    batch_size: int


class EchoHandler:
    """Upper-cases text; records every batch it ran; can sleep or raise on request."""

    item_type = EchoItem

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.setups = 0
        self.lock = threading.Lock()

    def setup(self) -> None:
        self.setups += 1

    def tokens(self, item: EchoItem) -> int:
        return len(item.text)

    def predict(self, batch: Sequence[EchoItem]) -> list[EchoOutput]:
        with self.lock:
            self.batches.append([i.text for i in batch])
        time.sleep(max((i.sleep_s for i in batch), default=0.0))
        if any(i.crash for i in batch):
            raise RuntimeError("crash requested")
        return [EchoOutput(text=i.text.upper(), batch_size=len(batch)) for i in batch]
