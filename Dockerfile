# curvd: multi-stage image. The build stage installs exactly what
# scripts/install-deps installs (it runs that script), builds and tests;
# the runtime stage holds only the daemon and its shared libraries.
# (No Docker engine runs in this project's CI; keep this file simple.)

FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/install-deps && make build/curvd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libopenblas0-pthread liblapacke libmicrohttpd12 libjansson4 libsqlite3-0 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/curvd --create-home curvd
COPY --from=build /src/build/curvd /usr/local/bin/curvd
USER curvd
WORKDIR /var/lib/curvd
VOLUME ["/var/lib/curvd"]
EXPOSE 8080
ENV CURVD_LISTEN=0.0.0.0 CURVD_PORT=8080 CURVD_DB=/var/lib/curvd/curvd.db
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/curvd"]
