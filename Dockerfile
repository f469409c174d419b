# hippo-scp node image: the DICOM Storage SCP with the shipped model weights, CPU only.
#   docker build -t hippo-scp .
#   docker run -p 11112:11112 -v $PWD/ae_config.yaml:/etc/hippo-scp/ae_config.yaml:ro hippo-scp \
#       --ae-title HIPPOAI --port 11112 --destination ORTHANC@pacs.example:4242 --settle 3
# The entrypoint is exactly the command the tests run: hippo-scp serve --config <file> [flags].
FROM python:3.11-slim

# MALLOC_ARENA_MAX=1: glibc's per-thread arenas cost ~40 MB of peak RSS with torch's threads
# (measured: inference process 390 -> 352 MB) at no measurable speed cost. The node also sets
# this limit itself (hippo_scp/model/memory_limits.py); the variable states it for operators.

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=1

# A non-root user owns only the writable state (outbox, spool, audit log).
RUN groupadd --system --gid 10001 hippo \
    && useradd --system --uid 10001 --gid hippo --home-dir /var/lib/hippo-scp --create-home hippo

WORKDIR /opt/hippo-scp

# Dependencies first (cached layer): the locked set, torch from the CPU wheel index.
COPY requirements.lock ./
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.lock

# The package itself, its weights, and the image's default configuration.
COPY pyproject.toml README.md ./
COPY hippo_scp ./hippo_scp
RUN pip install --no-cache-dir --no-deps .
COPY model_weights ./model_weights
COPY deploy_scripts/docker/ae_config.yaml /etc/hippo-scp/ae_config.yaml

USER 10001:10001
EXPOSE 11112

# C-ECHO ourselves (pynetdicom's echoscu app exits non-zero when the node does not answer).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "pynetdicom", "echoscu", "-aet", "HEALTHCHECK", "-aec", "HIPPOAI", "127.0.0.1", "11112"]

ENTRYPOINT ["hippo-scp", "serve", "--config", "/etc/hippo-scp/ae_config.yaml"]
# Add "--whole-series-sender", "ORTHANC" when Orthanc routes stable series whole
# (ORTHANC_ROUTING=series): results are then filed at the release, without the release grace.
# The compose stack routes per instance (the default), which may split a series: no such flag.
CMD ["--ae-title", "HIPPOAI", "--port", "11112", "--destination", "ORTHANC@orthanc:4242", "--settle", "3", "--priors"]
