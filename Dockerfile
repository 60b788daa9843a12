# CPU image. Build: docker build -t clip-image-encoder .
# Run:   docker run -p 51000:51000 -v hf-cache:/cache clip-image-encoder          (README: "Run the container")
# BASE is an argument so that the image also builds from a local base image (no registry pull).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# The CPU wheel index keeps torch small; without it PyPI's default Linux torch bundles CUDA (several GB).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache \
    JINA_OPTOUT_TELEMETRY=1

# uid 10001 owns /cache, so a named volume (which takes the image's ownership) works as it is. HOME is
# writable by any uid: with --user (a host cache's owner) Jina still keeps its caches under ~/.cache.
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 encoder \
    && mkdir -p /cache \
    && chown encoder /cache \
    && chmod 1777 /home/encoder

WORKDIR /app
# What serving needs, in a layer of its own (a change to the code does not install it again); the extras
# (training, export, duplicates, parquet) stay out of the image: the commands that need one say so.
COPY install.sh requirements.txt ./
RUN ./install.sh serving
COPY pyproject.toml README.md ./
COPY clip_image_encoder ./clip_image_encoder
RUN ./install.sh package
COPY executor.py config.yml indexer.yml flow.yml manifest.yml ./

# Set after the install steps, which read the build machine's pip configuration from root's home.
ENV HOME=/home/encoder
USER 10001
VOLUME ["/cache"]
EXPOSE 51000
# `serve` reads config.yml (flags after the image name override it) and stops gracefully on SIGTERM.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["clip-image-encoder", "health", "--port", "51000"]
ENTRYPOINT ["clip-image-encoder", "serve", "--config", "config.yml"]
CMD ["--port", "51000"]
