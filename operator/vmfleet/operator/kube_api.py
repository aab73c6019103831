"""The Kubernetes client vmfleet uses beside kopf (Secrets, the leader Lease): in-cluster, else $KUBECONFIG."""

from __future__ import annotations

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


def api_client() -> client.ApiClient:
    """A client logged in as this process may (a ConfigException when it may not): callers keep theirs."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)
