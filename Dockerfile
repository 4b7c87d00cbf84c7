# ccm: the API, pages and (embedded mode) worker, run as an unprivileged user.
# Build: docker build -t ccm .   Run: docker run -p 8000:8000 -v ccm-data:/var/lib/ccm ccm

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ccm
COPY pyproject.toml README.md /src/
COPY ccm /src/ccm
RUN /opt/ccm/bin/pip install /src

FROM python:3.11-slim-bookworm
# WeasyPrint's libraries (Pango, HarfBuzz with its subsetter, fontconfig) and fonts for print letters.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b libharfbuzz-subset0 \
        fontconfig fonts-dejavu-core fonts-liberation \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ccm --create-home ccm
COPY --from=build /opt/ccm /opt/ccm
ENV PATH=/opt/ccm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CCM_DATA_DIR=/var/lib/ccm
USER ccm
WORKDIR /var/lib/ccm
VOLUME ["/var/lib/ccm"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["ccm", "serve", "--host", "0.0.0.0", "--port", "8000"]
