# Orthanc for docker-compose.yml: the same Debian packages, configuration template and Lua
# routing as deploy_scripts/start_orthanc.sh. Build context: the repository root.
FROM debian:bookworm-slim

# Debian's stable packages (security updates come through the same versions' +debXuY).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb python3 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY deploy_scripts/common.sh deploy_scripts/render_orthanc_config.py \
     deploy_scripts/orthanc.json.template deploy_scripts/route_common.lua \
     deploy_scripts/route_dicoms.lua deploy_scripts/route_dicoms_per_instance.lua \
     /opt/hippo-deploy/deploy_scripts/
COPY deploy_scripts/docker/orthanc-entrypoint.sh /opt/hippo-deploy/deploy_scripts/docker/

RUN mkdir -p /var/lib/orthanc/db /var/lib/orthanc/run \
    && chown -R orthanc:orthanc /var/lib/orthanc
# The "orthanc" system user created by the Debian package (no fixed UID to refer to).
# hadolint ignore=DL3066
USER orthanc
ENV HIPPO_HOST=hippo-scp \
    ORTHANC_ROUTING=instance
EXPOSE 4242 8042
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8042/system"]
ENTRYPOINT ["/opt/hippo-deploy/deploy_scripts/docker/orthanc-entrypoint.sh"]
