# syntax=docker/dockerfile:1
# SpookyGAN images. Two targets from one file:
#   engine  GPU render engine (torch + CUDA libraries from the torch wheel)
#   bot     Discord bot (no torch; ~150 MB)
#   docker build --target engine -t spookygan-engine .
#   docker build --target bot    -t spookygan-bot .
# compose.yaml builds both. Both install through scripts/setup.sh, the project's one install path.
#
# Why python:slim and not nvidia/cuda for the engine: the torch 2.14.1 wheel on PyPI depends on the
# nvidia-*-cu13 wheels (cuBLAS, cuDNN, CUDA runtime, NCCL… see constraints.txt), so the CUDA user
# space arrives with `pip install`; only the driver (libcuda) is missing, and the NVIDIA Container
# Toolkit mounts it from the host at run time (`gpus: all` / compose's device reservation). A CUDA
# runtime base image would ship a second copy of the same libraries. The host driver must support
# CUDA 13.0 (R580 or newer); `nvidia-smi` on the host shows the highest CUDA version it supports.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- base: the Python and the unprivileged user every stage shares ---------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 spooky \
    && useradd --system --uid 10001 --gid spooky --home-dir /home/spooky --create-home spooky

# --- build: install into a virtual environment at /opt/spooky, copied whole into the final stages -
# setup.sh with SPOOKY_NO_VENV=1 installs into "the current Python", which PATH makes the venv's.
FROM base AS build
RUN python -m venv /opt/spooky
ENV PATH=/opt/spooky/bin:$PATH \
    VIRTUAL_ENV=/opt/spooky \
    SPOOKY_NO_VENV=1 \
    SPOOKY_EDITABLE=0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/setup.sh scripts/setup.sh
COPY spooky spooky
COPY engine engine
COPY bot bot

FROM build AS build-engine
RUN scripts/setup.sh engine

FROM build AS build-bot
RUN scripts/setup.sh bot

# --- bot: the Discord face, no torch ----------------------------------------------------------------
FROM base AS bot
COPY --from=build-bot /opt/spooky /opt/spooky
# The built-in defaults; compose mounts the operator's config.toml over it.
COPY config.example.toml /etc/spooky/config.toml
ENV PATH=/opt/spooky/bin:$PATH \
    SPOOKY_BOT__DATA_DIR=/data/bot
RUN mkdir -p /data/bot && chown -R spooky:spooky /data
VOLUME ["/data/bot"]
USER spooky
WORKDIR /home/spooky
ENTRYPOINT ["spooky"]
CMD ["bot", "--config", "/etc/spooky/config.toml"]

# --- engine: the GPU process (the default target) ------------------------------------------------------
FROM base AS engine
COPY --from=build-engine /opt/spooky /opt/spooky
COPY config.example.toml /etc/spooky/config.toml
# Weights and data live on volumes; the API listens on every interface of the container so the bot
# container can reach it (publish the port only on the host's loopback; see compose.yaml).
ENV PATH=/opt/spooky/bin:$PATH \
    SPOOKY_MODELS__CACHE_DIR=/weights \
    SPOOKY_ENGINE__DATA_DIR=/data \
    SPOOKY_ENGINE__HOST=0.0.0.0
RUN mkdir -p /weights /data && chown spooky:spooky /weights /data
VOLUME ["/weights", "/data"]
EXPOSE 8765
USER spooky
WORKDIR /home/spooky
# Healthy once the API answers /v1/health; start-period covers loading the models.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["spooky", "engine", "--config", "/etc/spooky/config.toml", "--check"]
# Weights: `docker compose run --rm engine weights fetch` (same entry point, same volume).
ENTRYPOINT ["spooky"]
CMD ["engine", "--config", "/etc/spooky/config.toml"]
