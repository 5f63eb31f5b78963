# A runtime image for todo-eventd: docker build -t todo-eventd:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
 && cargo build --release --locked -p todo-eventd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/todo-eventd todo-eventd \
 && mkdir -p /var/lib/todo-eventd/plugins /var/cache/todo-eventd \
 && chown -R todo-eventd /var/lib/todo-eventd /var/cache/todo-eventd
COPY --from=build /src/target/release/todo-eventd /usr/local/bin/todo-eventd
USER 10001
ENV TODO_EVENTD_CACHE_DIR=/var/cache/todo-eventd
EXPOSE 9477
ENTRYPOINT ["/usr/local/bin/todo-eventd"]
CMD ["run", "--plugins", "/var/lib/todo-eventd/plugins", "--admin-addr", "0.0.0.0:9477"]
