# taskmill image: both binaries on a slim runtime, running as a non-root user.
# Build:  docker build -t taskmill:latest .
# The binaries handle SIGTERM themselves, so they can run as PID 1.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p taskmill-master -p taskmill-worker

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home taskmill
COPY --from=build /src/target/release/taskmill-master /src/target/release/taskmill-worker /usr/local/bin/
USER taskmill
EXPOSE 5000
ENTRYPOINT ["taskmill-master"]
CMD ["serve", "--listen", "0.0.0.0:5000"]
