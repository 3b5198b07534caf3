"""Every Redis key the services use, in one place: ``cgpo:{service}:{kind}[:{id}]``."""

from __future__ import annotations


class Keys:
    """Key names for one service queue (``service`` is e.g. ``judges`` or ``rm``)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.prefix = f"cgpo:{service}"

    @property
    def stream(self) -> str:
        """Jobs waiting or in flight (entries are deleted once answered)."""
        return f"{self.prefix}:stream:jobs"

    @property
    def group(self) -> str:
        """The consumer group all workers of the service share."""
        return f"{self.prefix}:group:workers"

    @property
    def dead(self) -> str:
        """Dead-letter stream: jobs that exhausted their attempts, kept for inspection."""
        return f"{self.prefix}:stream:dead"

    @property
    def attempts(self) -> str:
        """Hash: stream entry id -> deliveries so far."""
        return f"{self.prefix}:attempts"

    @property
    def stats(self) -> str:
        """Hash of counters the workers keep (``late_results``: duplicates discarded after the first)."""
        return f"{self.prefix}:stats"

    @property
    def done_channel(self) -> str:
        """Pub/sub channel on which workers announce finished job ids."""
        return f"{self.prefix}:done"

    def request(self, job_id: str) -> str:
        """Idempotency marker: the digest of the job's items, set once when its id is first accepted."""
        return f"{self.prefix}:request:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def worker(self, worker_id: str) -> str:
        """Liveness key a worker refreshes with a TTL."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def baseline_prefix(self) -> str:
        """Prefix of cached baseline rewards: ``{prefix}:baseline:{sha256(model, prompt, baseline)}``."""
        return f"{self.prefix}:baseline:"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"
