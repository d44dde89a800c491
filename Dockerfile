# balancer in a container, run by twistd in the foreground as a non-root user.
#   docker build -t balancer .
#   docker run --rm -p 3000:3000 balancer --demo      # the example, with its demo backends
#   docker run --rm -p 3000:3000 -v $PWD/my.toml:/etc/balancer/balancer.toml:ro balancer
# The image's configuration is etc/balancer.toml with the sample server on 0.0.0.0:3000
# (the container's own addresses); mount yours over /etc/balancer/balancer.toml.
FROM python:3.11-slim

RUN useradd --system --home-dir /var/lib/balancer --create-home --shell /usr/sbin/nologin balancer

COPY setup.py README.md /src/
COPY balancer /src/balancer
COPY admin /src/admin
COPY twisted /src/twisted
COPY etc /src/etc
# A C compiler for the install only: pip builds the data plane's compiled loops with it.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir /src \
    && python -c "import balancer_cdispatch" \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /etc/balancer \
    && sed 's/^bind = "127.0.0.1:3000"/bind = "0.0.0.0:3000"/' /src/etc/balancer.toml > /etc/balancer/balancer.toml \
    && twistd balancer --check --config=/etc/balancer/balancer.toml \
    && rm -rf /src

USER balancer
WORKDIR /var/lib/balancer
EXPOSE 3000
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "balancer", "--config=/etc/balancer/balancer.toml"]
CMD []
