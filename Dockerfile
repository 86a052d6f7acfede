# syntax=docker/dockerfile:1
# StreamQuant images. Two targets:
#   cpu (the default, last stage): python:3.11-slim, runtime dependencies at requirements.lock's versions
#       docker build -t streamquant:cpu .
#   gpu: CUDA 12 runtime, Python 3.11, runtime dependencies plus the `gpu` extra (CuPy, cuDF, cuML) at
#        requirements-gpu.lock's versions
#       docker build --target gpu -t streamquant:gpu .
# Both run as the unprivileged user 10001 with `streamquant` as the entry point (`docker run streamquant:cpu
# run features`) and work in /var/lib/streamquant (Faust data, result cache, artifacts).
# deploy/docker/locks.py explains the two lock files; tests/unit/test_compose.py checks this file.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- cpu: dependencies and the project in /opt/venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so that a change to the code alone reuses this layer.
COPY pyproject.toml requirements.lock ./
COPY deploy/docker/locks.py deploy/docker/locks.py
RUN python deploy/docker/locks.py runtime pyproject.toml > /tmp/runtime.txt \
 && pip install --constraint requirements.lock --requirement /tmp/runtime.txt
COPY README.md ./
COPY schemas schemas
COPY streams streams
COPY processors processors
COPY gpu_kernels gpu_kernels
COPY streamquant streamquant
RUN pip install --no-deps . \
 && python deploy/docker/locks.py check requirements.lock \
 && pip check

# ---------------------------------------------------------------- gpu
FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="streamquant" \
      org.opencontainers.image.description="Kafka stream processing for quantitative trading (GPU image: CuPy, cuDF, cuML)" \
      org.opencontainers.image.licenses="Apache-2.0"
# LightGBM's library links the system's OpenMP runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
# Ubuntu's Python is 3.12: uv brings a standalone CPython 3.11, the version both locks were resolved for.
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv python install 3.11 \
 && uv venv --python 3.11 /opt/venv
WORKDIR /src
COPY requirements-gpu.lock ./
RUN uv pip sync requirements-gpu.lock
COPY pyproject.toml README.md ./
COPY deploy/docker/locks.py deploy/docker/locks.py
COPY schemas schemas
COPY streams streams
COPY processors processors
COPY gpu_kernels gpu_kernels
COPY streamquant streamquant
RUN uv pip install --no-deps . \
 && python deploy/docker/locks.py check requirements-gpu.lock \
 && uv pip check \
 && rm -rf /src /usr/local/bin/uv
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/streamquant --shell /usr/sbin/nologin streamquant \
 && install -d -o 10001 -g 10001 /var/lib/streamquant /var/lib/streamquant/artifacts
ENV PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/lib/streamquant/.cache/numba
WORKDIR /var/lib/streamquant
USER 10001:10001
EXPOSE 9464 6066
ENTRYPOINT ["streamquant"]
CMD ["--help"]

# ---------------------------------------------------------------- cpu (default target)
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="streamquant" \
      org.opencontainers.image.description="Kafka stream processing for quantitative trading (CPU image)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/streamquant --shell /usr/sbin/nologin streamquant \
 && install -d -o 10001 -g 10001 /var/lib/streamquant /var/lib/streamquant/artifacts
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/lib/streamquant/.cache/numba
WORKDIR /var/lib/streamquant
USER 10001:10001
EXPOSE 9464 6066
ENTRYPOINT ["streamquant"]
CMD ["--help"]
