# CPU image: docker build -t clip-image-encoder . && docker run -p 51000:51000 -v ~/.cache/huggingface:/cache clip-image-encoder
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

RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 encoder \
    && mkdir -p /cache \
    && chown encoder /cache

WORKDIR /app
# Dependencies first, so that code changes do not re-install them.
COPY install.sh requirements.txt pyproject.toml README.md ./
COPY clip_image_encoder ./clip_image_encoder
RUN ./install.sh
COPY executor.py config.yml indexer.yml flow.yml manifest.yml ./

USER 10001
VOLUME ["/cache"]
EXPOSE 51000
ENTRYPOINT ["jina", "executor", "--uses", "config.yml"]
CMD ["--port", "51000"]
