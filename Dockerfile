# distribute-exporter: the exporter (and the API simulator, for the compose demo) in one image.
# Build: docker build -t distribute-exporter .

FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
# LICENSE: pyproject names it as the license file, so the wheel build needs it.
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# The uvloop extra: 10-20% less CPU per proxied request and per poll (docs/dependencies.md);
# the postgres extra: the driver for state.url (several replicas on one PostgreSQL); the otel extra:
# the OpenTelemetry SDK and OTLP/HTTP exporter for tracing.endpoint (one trace per finished job).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[uvloop,postgres,otel]"

FROM python:3.11.10-slim-bookworm
LABEL org.opencontainers.image.title="distribute-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Distribute.ai's async inference API" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/distribute-exporter/distribute-exporter"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# Every wheel the build stage made: the exporter, its dependencies, uvloop and asyncpg.
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/distribute-exporter --create-home exporter
COPY config.yaml /etc/distribute-exporter/config.yaml
WORKDIR /var/lib/distribute-exporter
VOLUME ["/var/lib/distribute-exporter"]
USER 10001:10001
EXPOSE 9877
# Slim images have no curl: ask /-/healthy with the Python that is there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9877/-/healthy', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["distribute-exporter"]
CMD ["--config.file=/etc/distribute-exporter/config.yaml"]
