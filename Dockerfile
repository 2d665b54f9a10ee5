# cachedaemon in a container: `docker build -t cachedaemon .` then
#   docker run -p 8470:8470 -v cachedaemon-data:/var/lib/cachedaemon cachedaemon
# Settings come from CACHEDAEMON_<SECTION>_<NAME> variables (or flags after `serve`), e.g.
#   -e CACHEDAEMON_REMOTE_URL=s3://bucket -e CACHEDAEMON_REMOTE_S3_ENDPOINT=http://minio:9000
# docker-compose.yml runs it next to a moto S3 server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system cachedaemon \
    && useradd --system --gid cachedaemon --home-dir /var/lib/cachedaemon \
       --shell /usr/sbin/nologin cachedaemon \
    && install -d -o cachedaemon -g cachedaemon -m 0750 /var/lib/cachedaemon

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cachedaemon ./cachedaemon
RUN pip install . && rm -rf /src

# Listen on every interface inside the container; keep data (cache, logs, and the default
# file:// bucket) on the volume.
ENV CACHEDAEMON_SERVER_LISTEN=0.0.0.0:8470 \
    CACHEDAEMON_STORAGE_DATA_DIR=/var/lib/cachedaemon
VOLUME ["/var/lib/cachedaemon"]
EXPOSE 8470

USER cachedaemon
WORKDIR /var/lib/cachedaemon

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8470/healthz', timeout=2).status == 200 else 1)"]

# SIGTERM: in-flight requests finish (up to server.shutdown_timeout), trackers are saved, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cachedaemon"]
CMD ["serve"]
