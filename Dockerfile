# vmfleet operator image: Debian's libvirt client and qemu-utils, the package in a venv, a non-root user.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc pkg-config libvirt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/vmfleet \
 && /opt/vmfleet/bin/pip install --no-cache-dir .

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libvirt0 qemu-utils openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin vmfleet
COPY --from=build /opt/vmfleet /opt/vmfleet
ENV PATH=/opt/vmfleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["vmfleet"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz"]
