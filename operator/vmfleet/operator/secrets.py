"""Reading a store's SSH Secret from the cluster, with the operator's own credentials."""

from __future__ import annotations

import base64
import threading

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ..api.types import SecretRef
from ..storage import StoreError


class ClusterSecrets:
    """A SecretReader on the Kubernetes API (deploy/ grants `get` on Secrets in vmfleet-system only)."""

    def __init__(self) -> None:
        self._api: client.CoreV1Api | None = None
        self._lock = threading.Lock()

    def _core(self) -> client.CoreV1Api:
        with self._lock:
            if self._api is None:
                try:
                    config.load_incluster_config()
                except ConfigException:
                    config.load_kube_config()
                self._api = client.CoreV1Api()
            return self._api

    def __call__(self, ref: SecretRef) -> dict[str, str]:
        try:
            secret = self._core().read_namespaced_secret(ref.name, ref.namespace)
        except ApiException as e:
            raise StoreError(f"Secret {ref.namespace}/{ref.name} (spec.ssh.secretRef) cannot be read: "
                             f"{e.status} {e.reason}") from None
        except ConfigException as e:
            raise StoreError(f"no Kubernetes credentials to read Secret {ref.namespace}/{ref.name}: {e}") from None
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}
