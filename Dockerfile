# taskmill image: both binaries on Debian slim, running as a non-root user.
#   docker build -t taskmill:latest .
# Needs a registry for the two base images. Without one, scripts/build-image.sh builds the
# equivalent image FROM scratch (docker/Dockerfile) from statically linked binaries; both run
# docker-compose.yml unchanged.
# The binaries handle SIGTERM themselves, so they run as PID 1 without an init.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p taskmill-master -p taskmill-worker -p taskmill-bench

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 taskmill \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin taskmill \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /src/target/release/taskmill-master /src/target/release/taskmill-worker \
    /src/target/release/taskmill-bench /usr/local/bin/
# Numeric, so that runtimes can check it is not root (e.g. Kubernetes' runAsNonRoot).
USER 10001:10001
# 5000: the taskmill port; 8080: the HTTP port when `serve --http 0.0.0.0:8080` asks for it.
EXPOSE 5000 8080
ENTRYPOINT ["taskmill-master"]
CMD ["serve", "--listen", "0.0.0.0:5000"]
