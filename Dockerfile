FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trackpipe ./trackpipe
COPY ingest ./ingest
COPY console ./console
COPY workers ./workers
COPY destinations ./destinations
COPY commands ./commands
COPY tooling ./tooling
RUN pip install --no-cache-dir .
ENV TRACKPIPE_CONFIG=/etc/trackpipe/trackpipe.toml
ENTRYPOINT ["trackpipe"]
