FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ROUTER_HOST=0.0.0.0 ROUTER_PORT=8080 ROUTER_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY subscriptions ./subscriptions
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 router

USER router
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["webhook-router", "serve"]
