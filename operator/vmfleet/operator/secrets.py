"""Reading the Secrets that CloneStores and KvmHosts name, with the operator's own credentials."""

from __future__ import annotations

import base64

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ..api.types import SecretRef
from ..credentials import SecretData, SecretUnreadable
from .kube_api import api_client


class ClusterSecrets:
    """A SecretReader on the Kubernetes API (deploy/ grants `get` on Secrets in vmfleet-system, and in a fleet's
    namespace only where a RoleBinding grants vmfleet-cloud-init-reader). Every failure is a SecretUnreadable: the
    caller adds which field named the Secret."""

    def __init__(self) -> None:
        self._api: client.CoreV1Api | None = None

    def __call__(self, ref: SecretRef) -> SecretData:
        try:
            self._api = self._api or client.CoreV1Api(api_client())
            secret = self._api.read_namespaced_secret(ref.name, ref.namespace)
        except ApiException as e:
            raise SecretUnreadable(ref, f"cannot be read: {e.status} {e.reason}", forbidden=e.status == 403) from None
        except ConfigException as e:
            raise SecretUnreadable(ref, f"cannot be read: no Kubernetes credentials here ({e})") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:  # the message alone: it must not change every pass
            raise SecretUnreadable(
                ref, f"cannot be read: the Kubernetes API did not answer ({type(e).__name__})"
            ) from None
        # surrogateescape: bytes that are not UTF-8 (gzip'd user data) come through unchanged (seed.py)
        data = {k: base64.b64decode(v).decode(errors="surrogateescape") for k, v in (secret.data or {}).items()}
        return SecretData(data, secret.type or "Opaque")
