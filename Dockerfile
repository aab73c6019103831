# vmfleet operator image: Debian's libvirt client and qemu-utils, the package in a venv, a non-root user.
# BASE is an argument so that the image builds without a registry (hack/build-image.sh imports a
# debootstrap'd Debian); PIP_CERT lets pip trust a build host's TLS proxy without baking it in.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
ARG PIP_CERT=
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc pkg-config libvirt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# Debian's pip cannot build libvirt-python's wheel: upgrade pip, setuptools and wheel in the venv first.
RUN [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    python3 -m venv /opt/vmfleet \
 && /opt/vmfleet/bin/pip install --no-cache-dir --upgrade pip==25.3 setuptools==80.9.0 wheel==0.45.1 \
 && /opt/vmfleet/bin/pip install --no-cache-dir .

FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libvirt0 qemu-utils openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin vmfleet
COPY --from=build /opt/vmfleet /opt/vmfleet
ENV PATH=/opt/vmfleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=3s CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["vmfleet"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz"]
