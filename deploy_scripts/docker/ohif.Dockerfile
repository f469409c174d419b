# OHIF viewer for docker-compose.yml: the pinned prebuilt @ohif/app dist/ served by the same
# ohif_server.py as deploy_scripts/start_ohif.sh (proxying /dicom-web to the orthanc service).
# Build context: the repository root.
FROM node:20-bookworm-slim AS ohif
WORKDIR /ohif
COPY deploy_scripts/ohif/package.json deploy_scripts/ohif/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim
# pydicom + numpy: the server cuts 1-bit SEG frames Orthanc 1.10 refuses (see ohif_server.py).
RUN pip install --no-cache-dir pydicom==3.0.2 numpy==2.4.6
COPY --from=ohif /ohif/node_modules/@ohif/app/dist /srv/ohif/dist
COPY deploy_scripts/ohif_server.py deploy_scripts/ohif/app-config.js /srv/ohif/
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/app-config.js', timeout=4)"]
CMD ["python3", "/srv/ohif/ohif_server.py", "--dist", "/srv/ohif/dist", "--app-config", "/srv/ohif/app-config.js", "--orthanc", "http://orthanc:8042", "--bind", "0.0.0.0", "--port", "3000"]
