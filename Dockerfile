# curvd build image: the same two commands as on a Debian machine.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/install-deps && make lib
CMD ["make", "run"]
