# The jwtmcp issuer image: deploy/kubernetes/ and compose.yaml run it (docs/deploying-replicas.md).
#   docker build -t jwtmcp:0.1.0 .
# Extras: redis (the Redis/Valkey store replicas share) and kms (signing keys in AWS KMS).
# Add pkcs11 for an HSM (its vendor's PKCS#11 library must be in the image too).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY jwtmcp ./jwtmcp
RUN pip install '.[redis,kms]' && rm -rf /src

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
# /var/lib/jwtmcp holds the ring directory, clients.json and users.json (a volume at run time).
RUN groupadd --system --gid 10001 jwtmcp \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/jwtmcp --no-create-home jwtmcp \
 && mkdir -p /var/lib/jwtmcp && chown 10001:10001 /var/lib/jwtmcp && chmod 0700 /var/lib/jwtmcp
USER 10001:10001
WORKDIR /var/lib/jwtmcp
ENV JWTMCP_KEYS=/var/lib/jwtmcp/keys \
    JWTMCP_CLIENTS=/var/lib/jwtmcp/clients.json \
    JWTMCP_USERS=/var/lib/jwtmcp/users.json

EXPOSE 8000
ENTRYPOINT ["jwtmcp"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
