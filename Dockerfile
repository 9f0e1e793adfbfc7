# curvd: multi-stage image. The build stage installs what building the
# daemon needs (scripts/install-deps daemon: no torch, valgrind, clang or
# browser) and builds it from the sources alone (.dockerignore leaves out
# build/, var/ and node_modules); the runtime stage holds only the daemon
# and its shared libraries, runs as the unprivileged user curvd, and keeps
# the database in the volume /var/lib/curvd.
# No Docker engine runs in this project's CI: tests/docker/check-dockerfile.sh
# (make check-docker) runs the build stage's steps in a clean copy of the
# tree and checks the runtime stage against the binary they build.

FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/install-deps daemon && make build/curvd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libopenblas0-pthread liblapacke libmicrohttpd12 libjansson4 libsqlite3-0 libpq5 curl \
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
