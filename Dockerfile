# fedgate in a container: the same binary, defaults and layout as the Debian package.
#
#   docker build -t fedgate .
#   docker run --rm -v /srv/fedgate:/etc/fedgate:ro -p 5269:5269 fedgate
#
# The image runs `fedgate run --config /etc/fedgate/fedgate.toml` as the unprivileged user
# fedgate (uid 10001) and logs to stderr (`docker logs`). It ships the package's default
# /etc/fedgate/fedgate.toml and policy.toml (examples/package/); mount your own directory
# there with your config, policy, certificate and key. Settings can also come from the
# environment: FEDGATE__SECTION__KEY (README, "Configuration reference"). A container has its
# own loopback: set FEDGATE__METRICS__LISTEN=0.0.0.0:9269 (and components.listen) to reach
# those listeners from outside it. deploy/compose/compose.yml runs two nodes with Redis.
#
# Not built by the test suite (no container engine on the build machines). Needs BuildKit
# (COPY --chmod), the default builder of current Docker.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release --bin fedgate \
 && target/release/fedgate generate-assets /out/assets >/dev/null \
 && gzip -9n /out/assets/man/*.1

# ---- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 fedgate \
 && useradd --system --uid 10001 --gid fedgate --home-dir /var/lib/fedgate \
      --shell /usr/sbin/nologin fedgate \
 && install -d -o fedgate -g fedgate -m 0750 /var/lib/fedgate \
 && install -d -o root -g fedgate -m 0750 /etc/fedgate
COPY --from=build /src/target/release/fedgate /usr/bin/fedgate
COPY --from=build /out/assets/man/ /usr/share/man/man1/
COPY --chown=root:fedgate --chmod=0640 examples/package/fedgate.toml examples/package/policy.toml /etc/fedgate/
COPY deploy/grafana/fedgate-dashboard.json /usr/share/fedgate/grafana/
COPY deploy/prometheus/fedgate-alerts.yml /usr/share/fedgate/prometheus/
USER fedgate
WORKDIR /var/lib/fedgate
# s2s (STARTTLS and direct TLS), SIP federation, intercluster links, metrics/status
EXPOSE 5269 5061 7400 9269
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/fedgate"]
CMD ["run", "--config", "/etc/fedgate/fedgate.toml"]
