# One image for every service; the Kubernetes manifests pick the service with `tti serve <name>`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir .
USER nobody
# tti listens on 127.0.0.1 by default; in a container it must listen on the container's own
# address for a published port to reach it (the manifests set the same for every service).
ENV TTI_HTTP_HOST=0.0.0.0 TTI_JT808_HOST=0.0.0.0
ENTRYPOINT []
CMD ["tti", "run"]
