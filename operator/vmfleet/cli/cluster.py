"""Reading vmfleet's objects from a cluster for `vmfleet status`, with errors that say what to do."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..api.schema import DEFAULT_NAMESPACE, GROUP, VERSION


class ClusterError(Exception):
    pass


def _namespace_of_context() -> str:
    from kubernetes import config

    _, active = config.list_kube_config_contexts()
    return str((active or {}).get("context", {}).get("namespace") or DEFAULT_NAMESPACE)


def _connect(namespace: str | None) -> str:
    """Load $KUBECONFIG (or the in-cluster config); the namespace to use."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config()
        ns = namespace or _namespace_of_context()
    except (ConfigException, FileNotFoundError) as e:
        if "KUBERNETES_SERVICE_HOST" not in os.environ:
            where = os.environ.get("KUBECONFIG", "~/.kube/config")
            raise ClusterError(
                f"no cluster to ask: the kubeconfig {where} is unusable ({e}); set KUBECONFIG, "
                "or look at standalone manifests with `vmfleet status -f DIR`"
            ) from None
        config.load_incluster_config()
        ns = namespace or DEFAULT_NAMESPACE
    return ns


def read_fleets(namespace: str | None, all_namespaces: bool, name: str | None = None) -> list[dict[str, Any]]:
    """The VmFleets in a namespace (the kubeconfig context's by default), or in all; from $KUBECONFIG or in-cluster."""
    from kubernetes import client

    ns = _connect(namespace)
    api = client.CustomObjectsApi()
    with _asking(ns, name):
        if name:
            return [api.get_namespaced_custom_object(GROUP, VERSION, ns, "vmfleets", name, _request_timeout=15)]
        if all_namespaces:
            found = api.list_cluster_custom_object(GROUP, VERSION, "vmfleets", _request_timeout=15)
        else:
            found = api.list_namespaced_custom_object(GROUP, VERSION, ns, "vmfleets", _request_timeout=15)
    return sorted(found.get("items", []), key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))


def annotate_fleet(namespace: str | None, name: str, key: str, value: str) -> str:
    """Set one annotation on a VmFleet (a merge patch, as `kubectl annotate --overwrite`); the namespace used."""
    from kubernetes import client

    ns = _connect(namespace)
    with _asking(ns, name):
        client.CustomObjectsApi().patch_namespaced_custom_object(
            GROUP, VERSION, ns, "vmfleets", name, {"metadata": {"annotations": {key: value}}}, _request_timeout=15
        )
    return ns


def annotate_host(name: str, key: str, value: str | None) -> None:
    """Set (None: remove) one annotation on a KvmHost, as `kubectl annotate kvh NAME KEY=VALUE --overwrite`."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    _connect(None)
    try:
        with _asking("", name):
            client.CustomObjectsApi().patch_cluster_custom_object(
                GROUP, VERSION, "kvmhosts", name, {"metadata": {"annotations": {key: value}}}, _request_timeout=15
            )
    except ClusterError as e:
        cause = e.__context__
        if isinstance(cause, ApiException) and cause.status == 404:
            raise ClusterError(f"KvmHost {name} not found: `kubectl get kvh` lists the hosts") from None
        raise


@contextlib.contextmanager
def _asking(ns: str, name: str | None) -> Iterator[None]:
    """The API's refusals and a cluster out of reach, as ClusterError saying what to do."""
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as e:
        raise ClusterError(_explain(e, ns, name)) from None
    except urllib3.exceptions.HTTPError as e:
        host = client.Configuration.get_default_copy().host
        raise ClusterError(
            f"cannot reach the Kubernetes API at {host} ({type(e).__name__}); "
            "check KUBECONFIG and that the cluster is up"
        ) from None


def _explain(e: Any, namespace: str, name: str | None) -> str:
    if e.status == 404 and name:
        return f"VmFleet {namespace}/{name} not found: `vmfleet status -n {namespace}` lists the fleets there"
    if e.status == 404:
        return "the cluster does not know VmFleets: install vmfleet's CRDs with `kubectl apply -k deploy/`"
    if e.status in (401, 403):
        return (
            f"the API refused to show VmFleets in {namespace} ({e.status} {e.reason}): your kubeconfig's user "
            "needs get/list on vmfleets.vmfleet.io"
        )
    return f"the Kubernetes API answered {e.status} {e.reason}"
