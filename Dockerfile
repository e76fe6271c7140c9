# rdpwire: multi-stage build, small non-root runtime image.
#
# Build:  docker build -t rdpwire .
# Run:    see docs/deploy.md — io_uring needs a seccomp profile that allows it and a memlock
#         limit of at least 512 KiB; the gateway says so at start-up when either is missing.

FROM rust:1-bookworm AS build
# C/C++ sources built by crates (OpenH264 for the demo desktop) need only the toolchain in
# this image; cmake is for the audio codec's sys crate.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rdpwire \
 && install -m 0755 target/release/rdpwire /usr/local/bin/rdpwire

FROM debian:bookworm-slim
# CA roots for `tls = "verify"` targets; libstdc++ for OpenH264 (demo desktop).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rdpwire
COPY --from=build /usr/local/bin/rdpwire /usr/local/bin/rdpwire
USER rdpwire
ENV RDPWIRE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["rdpwire", "probe", "--address", "127.0.0.1:8080", "--path", "/healthz"]
ENTRYPOINT ["rdpwire"]
CMD ["serve"]
