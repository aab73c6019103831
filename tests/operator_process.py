"""The operator as its own OS process (`vmfleet run`), as it runs in a cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from cluster import free_port, wait_until_ok

VMFLEET = str(Path(sys.executable).parent / "vmfleet")


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, log: Path, resync_seconds: float = 2.0, env: dict[str, str] | None = None
    ) -> None:
        self.kubeconfig, self.log, self.resync = kubeconfig, log, resync_seconds
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        port, self.metrics_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "VMFLEET_RESYNC_SECONDS": str(self.resync), **self.env}
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                VMFLEET,
                "run",
                "--standalone",
                f"--liveness=http://127.0.0.1:{port}/healthz",
                f"--metrics-port={self.metrics_port}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        wait_until_ok(urllib.request.Request(f"http://127.0.0.1:{port}/healthz"), [self.proc], 60, self.output)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The /metrics page, parsed by prometheus_client's own parser: (name, labels) -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        page = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(page)
            for s in family.samples
        }
